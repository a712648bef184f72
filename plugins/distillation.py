"""Teacher–student distillation (PAPER.md §2.1, §2.4) and its losses.

Objective ``distillation``: the teacher (no gradients) and the student see the same views; the loss component
compares their outputs view by view. Loss ``ce``: cross-entropy between softmax(teacher/τ_t) and
log-softmax(student/τ_s) — the same gradient as KL(teacher‖student) for a frozen teacher. The KL itself is
logged (``train/kl``), computed directly so the ~1e-5 values of the paper's setting are not lost to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError


@dataclass
class CrossEntropyOptions:
    teacher_temp: float = 1.0  # τ_t (the paper: 1; DINO: 0.04)
    student_temp: float = 1.0  # τ_s (the paper: 1; DINO: 0.1)


class CrossEntropy:
    """CE(softmax(t/τ_t), log_softmax(s/τ_s)); logs the KL divergence and the teacher's entropy."""

    def __init__(self, opts: CrossEntropyOptions) -> None:
        if opts.teacher_temp <= 0 or opts.student_temp <= 0:
            raise RtlabError("loss.teacher_temp and loss.student_temp must be positive")
        self.opts = opts

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor):
        log_q = F.log_softmax(student.float() / self.opts.student_temp, dim=-1)
        log_p = F.log_softmax(teacher.float() / self.opts.teacher_temp, dim=-1)
        p = log_p.exp()
        ce = -(p * log_q).sum(-1).mean()
        with torch.no_grad():
            kl = (p * (log_p - log_q)).sum(-1).mean()
            entropy = -(p * log_p).sum(-1).mean()
        return ce, {"kl": kl, "teacher_entropy": entropy}


@dataclass
class DistillationOptions:
    pass


class Distillation:
    """The student matches the teacher's output on the same view (single-crop distillation)."""

    def __init__(self, opts: DistillationOptions) -> None:
        self.opts = opts

    def setup(self, run):
        if run.loss_fn is None:
            raise RtlabError("objective=distillation needs a loss component (e.g. loss=ce)")
        return []

    def loss(self, run, views, index):
        with torch.no_grad():
            targets = [run.teacher(v) for v in views]
        total = None
        logs: dict[str, torch.Tensor] = {}
        for view, target in zip(views, targets):
            value, parts = run.loss_fn(run.student(view), target)
            total = value if total is None else total + value
            for k, v in parts.items():
                logs[k] = logs[k] + v if k in logs else v
        n = len(views)
        return total / n, {k: v / n for k, v in logs.items()}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "distillation", Distillation, DistillationOptions)
    registry.add("loss", "ce", CrossEntropy, CrossEntropyOptions)
