"""Teacher updaters: what happens to the teacher after each optimiser step and each epoch.

* ``frozen`` — the teacher's weights never change (the random-teacher setting; EMA momentum 1);
* ``ema`` — θ_T ← m·θ_T + (1 − m)·θ_S after every step, m following a cosine schedule from ``momentum`` to
  ``final_momentum`` (DINO: 0.996 → 1), with multi-tensor ``torch._foreach_*`` ops;
* ``prev_epoch`` — at the end of every ``every``-th epoch the teacher becomes a **copy** of the student (the
  reference code aliased the tensors, which made teacher and student one network from then on).

Every updater has ``bn_mode``, what the teacher's batch norm does (docs/paper.md#teacher-loss-and-batch-norm):

* ``eval`` (default, the paper) — the teacher runs in eval mode; its running statistics never change, so a random
  teacher's BN is the identity map;
* ``from_data`` — the teacher runs in train mode: BN normalises with the batch statistics and tracks them (DINO);
* ``from_student`` — the teacher runs in eval mode with the student's running statistics: copied after every step
  (``frozen``) or epoch (``prev_epoch``), averaged with the EMA momentum (``ema``).

:class:`EMA` and :func:`cosine_momentum` are usable on their own (BYOL- and DINO-style objectives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from framework.api import hookimpl, RtlabError

BN_MODES = ("eval", "from_data", "from_student")


def matched_tensors(target: nn.Module, source: nn.Module, buffers: bool = False
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters (or BN running statistics) of ``target`` and ``source`` paired by name."""
    if buffers:
        def named(net):
            return {f"{n}.{b}": getattr(m, b) for n, m in net.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                    for b in ("running_mean", "running_var")}
    else:
        def named(net):
            return dict(net.named_parameters())
    t, s = named(target), named(source)
    if t.keys() != s.keys():
        diff = sorted(t.keys() ^ s.keys())
        raise RtlabError(f"teacher and student differ in architecture (e.g. {diff[0]}); updaters need the same one")
    return [t[k].data for k in t], [s[k].data for k in t]


class EMA:
    """θ_T ← m·θ_T + (1 − m)·θ_S over every parameter (and, with ``buffers``, every BN running statistic) of two
    networks of one architecture, with multi-tensor ops."""

    def __init__(self, target: nn.Module, source: nn.Module, params: bool = True, buffers: bool = False) -> None:
        self.target: list[torch.Tensor] = []
        self.source: list[torch.Tensor] = []
        for kind in [False] * params + [True] * buffers:
            t, s = matched_tensors(target, source, buffers=kind)
            self.target += t
            self.source += s

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        if momentum >= 1.0 or not self.target:
            return
        torch._foreach_lerp_(self.target, self.source, 1.0 - momentum)

    @torch.no_grad()
    def copy(self) -> None:
        """θ_T ← θ_S (values copied, never aliased)."""
        torch._foreach_copy_(self.target, self.source)


def cosine_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """DINO's momentum schedule: ``base`` at step 0, rising along a half cosine to ``final`` at ``total_steps``."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@dataclass
class TeacherUpdateOptions:
    bn_mode: str = "eval"  # eval (the paper) | from_data (DINO: teacher in train mode) | from_student


class TeacherUpdate:
    """Shared by the updaters: the teacher's BN mode."""

    weights_frozen = False

    def __init__(self, opts: TeacherUpdateOptions) -> None:
        if opts.bn_mode not in BN_MODES:
            raise RtlabError(f"updater.bn_mode must be one of {', '.join(BN_MODES)}, got '{opts.bn_mode}'")
        self.opts = opts
        self.bn_stats: EMA | None = None

    @property
    def frozen(self) -> bool:
        return self.weights_frozen and self.opts.bn_mode == "eval"

    def setup(self, run) -> None:
        run.teacher.train(self.opts.bn_mode == "from_data")
        if self.opts.bn_mode == "from_student":
            self.bn_stats = EMA(run.teacher, run.student, params=False, buffers=True)

    def update(self, run) -> None:
        pass

    def epoch_end(self, run) -> None:
        pass


class FrozenTeacher(TeacherUpdate):
    """No weight updates (``bn_mode=from_student`` still copies the student's BN statistics after each step)."""

    weights_frozen = True

    def update(self, run) -> None:
        if self.bn_stats is not None:
            self.bn_stats.copy()


@dataclass
class EMAOptions(TeacherUpdateOptions):
    momentum: float = 0.996  # m at the first step
    final_momentum: float = 1.0  # m at the last step (cosine schedule); = momentum for a constant m


class EMATeacher(TeacherUpdate):
    """Exponential moving average of the student, momentum on a cosine schedule (DINO, BYOL)."""

    def __init__(self, opts: EMAOptions) -> None:
        super().__init__(opts)
        for name in ("momentum", "final_momentum"):
            if not 0.0 <= getattr(opts, name) <= 1.0:
                raise RtlabError(f"updater.{name} must be in [0, 1], got {getattr(opts, name)}")
        self.ema: EMA | None = None
        self.momentum = opts.momentum

    def setup(self, run) -> None:
        super().setup(run)
        self.ema = EMA(run.teacher, run.student)

    def update(self, run) -> None:
        # run.step counts steps done before this one: the first update uses the base momentum
        self.momentum = cosine_momentum(run.step, run.total_steps, self.opts.momentum, self.opts.final_momentum)
        self.ema.update(self.momentum)
        if self.bn_stats is not None:
            self.bn_stats.update(self.momentum)


@dataclass
class PrevEpochOptions(TeacherUpdateOptions):
    every: int = 1  # epochs between copies


class PrevEpochTeacher(TeacherUpdate):
    """At the end of every ``every``-th epoch the teacher becomes a copy of the student."""

    def __init__(self, opts: PrevEpochOptions) -> None:
        super().__init__(opts)
        if opts.every <= 0:
            raise RtlabError(f"updater.every must be a positive number of epochs, got {opts.every}")
        self.weights: EMA | None = None

    def setup(self, run) -> None:
        super().setup(run)
        self.weights = EMA(run.teacher, run.student)

    def epoch_end(self, run) -> None:
        if run.epoch % self.opts.every == 0:
            self.weights.copy()
            if self.bn_stats is not None:
                self.bn_stats.copy()


@hookimpl
def rtlab_register(registry):
    registry.add("updater", "frozen", FrozenTeacher, TeacherUpdateOptions)
    registry.add("updater", "ema", EMATeacher, EMAOptions)
    registry.add("updater", "prev_epoch", PrevEpochTeacher, PrevEpochOptions)
