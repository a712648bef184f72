"""Optimisers and their learning-rate schedules.

* ``adamw`` — the paper's optimiser: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0 (AdamW ≡ Adam);
* ``sgd`` — momentum SGD (the supervised recipe of PAPER.md §6: lr 0.1, momentum 0.9, wd 1e-4, multistep).

Schedules (``optimizer.schedule``): ``constant``; ``cosine`` (to ``min_lr``); ``multistep`` (× ``gamma`` at
each epoch in ``milestones``). ``warmup_epochs`` ramps linearly from 0 first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import torch

from framework import hookimpl
from framework.errors import RtlabError

SCHEDULES = ("constant", "cosine", "multistep")


@dataclass
class ScheduleOptions:
    schedule: str = "constant"  # constant | cosine | multistep
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # cosine floor
    milestones: List[int] = field(default_factory=list)  # multistep epochs
    gamma: float = 0.1  # multistep factor


def lr_factor(opts: ScheduleOptions, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based) for ``opts``; ``min_lr`` is returned as a ratio by
    the caller."""
    epoch = step / max(steps_per_epoch, 1)
    warm = opts.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if opts.schedule == "constant":
        return 1.0
    if opts.schedule == "multistep":
        return opts.gamma ** sum(epoch >= m for m in opts.milestones)
    progress = (step - warm) / max(total_steps - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class _Scheduled:
    def __init__(self, opts: ScheduleOptions) -> None:
        if opts.schedule not in SCHEDULES:
            raise RtlabError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, got '{opts.schedule}'")
        self.opts = opts

    def build(self, params, run) -> torch.optim.Optimizer:
        params = list(params)
        if self.opts.lr <= 0:  # type: ignore[attr-defined]
            raise RtlabError(f"optimizer.lr must be positive, got {self.opts.lr}")  # type: ignore[attr-defined]
        return self.make(params, self.opts, _fused_ok(params, run))

    def make(self, params: list, opts, kernel: dict) -> torch.optim.Optimizer:
        """The torch optimiser; ``kernel`` selects fused (CUDA) or multi-tensor (foreach) updates."""
        raise NotImplementedError

    def schedule(self, optimizer: torch.optim.Optimizer, run) -> None:
        if self.opts.schedule == "constant" and not self.opts.warmup_epochs:
            return
        f = lr_factor(self.opts, run.step, run.steps_per_epoch, run.total_steps)
        base = self.opts.lr  # type: ignore[attr-defined]
        lr = self.opts.min_lr + (base - self.opts.min_lr) * f if self.opts.schedule == "cosine" else base * f
        for group in optimizer.param_groups:
            group["lr"] = lr


def _fused_ok(params: list, run) -> dict:
    """fused kernels on CUDA, multi-tensor (foreach) elsewhere."""
    if run.device.type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


@dataclass
class AdamWOptions(ScheduleOptions):
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


class AdamW(_Scheduled):
    """AdamW (the paper: lr 1e-3, no weight decay, constant schedule)."""

    def make(self, params, o: AdamWOptions, kernel: dict):
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                 **kernel)


@dataclass
class SGDOptions(ScheduleOptions):
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    dampening: float = 0.0


class SGD(_Scheduled):
    """Momentum SGD."""

    def make(self, params, o: SGDOptions, kernel: dict):
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov, dampening=o.dampening, **kernel)


@hookimpl
def rtlab_register(registry):
    registry.add("optimizer", "adamw", AdamW, AdamWOptions)
    registry.add("optimizer", "sgd", SGD, SGDOptions)
