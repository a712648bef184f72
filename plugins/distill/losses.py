"""Losses between the student's and the teacher's outputs of one view pair (kind ``loss``).

* ``ce`` — cross-entropy H(softmax(t/τ_t), softmax(s/τ_s)): the paper's (docs/paper.md#objective); for a frozen teacher
  it has the gradient of KL(teacher‖student);
* ``mse`` — mean squared error between the tempered outputs, on the logits (``space=logits``) or on the softmax
  probabilities (``space=probabilities``);
* ``h_pred`` — the entropy of the student's prediction softmax(s/τ_s) alone (the reference code's ``H_pred``: the
  teacher is ignored, which shows what sharpening alone does).

Every loss logs ``kl`` = KL(softmax(t/τ_t)‖softmax(s/τ_s)), computed directly so the ~1e-5 values of the
paper's setting are not lost to rounding, and the teacher's entropy ``teacher_entropy`` — on the steps whose metrics
are logged (``diagnose=True``); the others skip these extra passes over the 65,536-wide outputs. Temperatures: τ_s is
``student_temp``; τ_t is ``teacher_temp``, optionally warmed up linearly from ``teacher_temp_start`` over
``teacher_temp_warmup_epochs`` (DINO: 0.04 → 0.07 over 30 epochs). The objective calls ``set_epoch`` before
every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from framework.api import hookimpl, RtlabError


@dataclass
class TemperatureOptions:
    teacher_temp: float = 1.0  # τ_t (the paper: 1; DINO: 0.04 → 0.07)
    student_temp: float = 1.0  # τ_s (the paper: 1; DINO: 0.1)
    teacher_temp_start: Optional[float] = None  # τ_t at epoch 0 of a linear warm-up; None: constant τ_t
    teacher_temp_warmup_epochs: float = 0.0  # length of the warm-up


def teacher_temperature(opts: TemperatureOptions, epoch: float) -> float:
    """τ_t at the fractional ``epoch``: linear from ``teacher_temp_start`` to ``teacher_temp``, then constant."""
    if opts.teacher_temp_start is None or opts.teacher_temp_warmup_epochs <= 0:
        return opts.teacher_temp
    progress = min(max(epoch / opts.teacher_temp_warmup_epochs, 0.0), 1.0)
    return opts.teacher_temp_start + (opts.teacher_temp - opts.teacher_temp_start) * progress


class Tempered:
    """Temperatures and the KL every loss logs."""

    def __init__(self, opts: TemperatureOptions) -> None:
        temps = [opts.teacher_temp, opts.student_temp]
        if opts.teacher_temp_start is not None:
            temps.append(opts.teacher_temp_start)
        if min(temps) <= 0:
            raise RtlabError("loss.teacher_temp, loss.student_temp and loss.teacher_temp_start must be positive")
        self.opts = opts
        self.teacher_temp = teacher_temperature(opts, 0.0)

    def set_epoch(self, epoch: float) -> None:
        self.teacher_temp = teacher_temperature(self.opts, epoch)

    @staticmethod
    def _tempered(x: torch.Tensor, temperature: float) -> torch.Tensor:
        x = x.float()
        return x if temperature == 1.0 else x / temperature  # τ = 1 (the paper): no extra pass over the outputs

    def student_log_probs(self, student: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self._tempered(student, self.opts.student_temp), dim=-1)

    def teacher_log_probs(self, teacher: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self._tempered(teacher, self.teacher_temp), dim=-1)

    def teacher_probs(self, teacher: torch.Tensor) -> torch.Tensor:
        return F.softmax(self._tempered(teacher, self.teacher_temp), dim=-1)

    @torch.no_grad()
    def divergences(self, log_q: torch.Tensor, teacher: torch.Tensor, diagnose: bool = True
                    ) -> dict[str, torch.Tensor]:
        """KL(p‖q) and H(p) of the teacher's outputs when ``diagnose`` (else nothing)."""
        if not diagnose:
            return {}
        log_p = self.teacher_log_probs(teacher)
        p = log_p.exp()
        return {"kl": (p * (log_p - log_q)).sum(-1).mean(), "teacher_entropy": -(p * log_p).sum(-1).mean()}


@dataclass
class CrossEntropyOptions(TemperatureOptions):
    pass


class CrossEntropy(Tempered):
    """CE(softmax(t/τ_t), log_softmax(s/τ_s)); logs the KL divergence and the teacher's entropy."""

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, diagnose: bool = True):
        log_q = self.student_log_probs(student)
        ce = -(self.teacher_probs(teacher) * log_q).sum(-1).mean()
        return ce, self.divergences(log_q.detach(), teacher, diagnose)


@dataclass
class MSEOptions(TemperatureOptions):
    space: str = "logits"  # logits: ‖s/τ_s − t/τ_t‖² | probabilities: ‖softmax(s/τ_s) − softmax(t/τ_t)‖²


class MeanSquaredError(Tempered):
    """Mean squared error between the tempered outputs (logits or probabilities), averaged over all entries."""

    def __init__(self, opts: MSEOptions) -> None:
        if opts.space not in ("logits", "probabilities"):
            raise RtlabError(f"loss.space must be logits or probabilities, got '{opts.space}'")
        super().__init__(opts)

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, diagnose: bool = True):
        log_q = self.student_log_probs(student)
        if self.opts.space == "logits":
            loss = F.mse_loss(self._tempered(student, self.opts.student_temp),
                              self._tempered(teacher, self.teacher_temp))
        else:
            loss = F.mse_loss(log_q.exp(), self.teacher_probs(teacher))
        return loss, self.divergences(log_q.detach(), teacher, diagnose)


class PredictionEntropy(Tempered):
    """H(softmax(s/τ_s)): the entropy of the student's prediction; the teacher only enters the logged KL."""

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, diagnose: bool = True):
        log_q = self.student_log_probs(student)
        entropy = -(log_q.exp() * log_q).sum(-1).mean()
        return entropy, self.divergences(log_q.detach(), teacher, diagnose)


@hookimpl
def rtlab_register(registry):
    registry.add("loss", "ce", CrossEntropy, CrossEntropyOptions)
    registry.add("loss", "mse", MeanSquaredError, MSEOptions)
    registry.add("loss", "h_pred", PredictionEntropy, TemperatureOptions)
