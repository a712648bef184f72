"""Optimisers with their learning-rate and weight-decay schedules, gradient clipping and last-layer freezing.

* ``adamw`` — the paper's optimiser: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0 (AdamW ≡ Adam);
* ``sgd`` — momentum SGD (the supervised recipe of docs/paper.md#fig-8: lr 0.1, momentum 0.9, wd 1e-4, multistep).

Options shared by both (their defaults switch each effect off):

* ``schedule`` — the learning rate: ``constant``; ``cosine`` (to ``min_lr``); ``multistep`` (× ``gamma`` at each
  epoch in ``milestones``). ``warmup_epochs`` ramps it linearly from 0 first (DINO: 10 epochs, then cosine);
* ``final_weight_decay`` — weight decay on a cosine schedule from ``weight_decay`` to this value (DINO: 0.04 → 0.4);
* ``decay_bias_and_norm`` — false: biases and norm weights (every 1-d tensor) get no weight decay (DINO);
* ``clip_grad`` — clip the gradient norm to this value (DINO: 3), over all parameters together or, with
  ``clip_per_parameter``, each tensor on its own (as DINO's original code);
* ``freeze_last_layer_epochs`` — the student's ``last_layer`` module gets no updates during the first N epochs
  (DINO: 1): its gradients are dropped, so the optimiser skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from framework.api import hookimpl, RtlabError

SCHEDULES = ("constant", "cosine", "multistep")


@dataclass
class ScheduleOptions:
    schedule: str = "constant"  # constant | cosine | multistep
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # cosine floor
    milestones: List[int] = field(default_factory=list)  # multistep epochs
    gamma: float = 0.1  # multistep factor
    final_weight_decay: Optional[float] = None  # cosine weight-decay schedule to this value; None: constant
    decay_bias_and_norm: bool = True  # false: no weight decay on 1-d tensors (biases, norm weights)
    clip_grad: float = 0.0  # max gradient norm; 0: no clipping
    clip_per_parameter: bool = False  # clip every tensor's norm on its own instead of the global norm
    freeze_last_layer_epochs: float = 0.0  # epochs without updates to last_layer
    last_layer: str = "head.last"  # the student's module frozen by freeze_last_layer_epochs


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


def cosine_value(start: float, end: float, step: int, total_steps: int) -> float:
    """``start`` at step 0 to ``end`` at ``total_steps`` along a half cosine."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


class _Scheduled:
    cpu_fused = False  # the optimiser's fused CPU kernel is exact (checked against foreach) and used there

    def __init__(self, opts: ScheduleOptions) -> None:
        if opts.schedule not in SCHEDULES:
            raise RtlabError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, got '{opts.schedule}'")
        if opts.clip_grad < 0 or opts.freeze_last_layer_epochs < 0:
            raise RtlabError("optimizer.clip_grad and optimizer.freeze_last_layer_epochs must be >= 0")
        self.opts = opts
        self.last_layer: list[torch.nn.Parameter] = []
        self.params: list[torch.nn.Parameter] = []

    def param_groups(self, params: list, run) -> list[dict]:
        """Weight-decayed and (with ``decay_bias_and_norm=false``) non-decayed groups; remembers the last layer."""
        self.params = params
        if self.opts.freeze_last_layer_epochs:
            try:
                module = run.student.get_submodule(self.opts.last_layer)
            except AttributeError:
                raise RtlabError(f"optimizer.last_layer '{self.opts.last_layer}' is not a module of the student; "
                                 "name the last layer (e.g. head.last) or set freeze_last_layer_epochs=0") from None
            self.last_layer = list(module.parameters())
        wd = self.opts.weight_decay  # type: ignore[attr-defined]
        if self.opts.decay_bias_and_norm:
            return [{"params": params, "weight_decay": wd, "decayed": True}]
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd, "decayed": True},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "decayed": False}]
        return [g for g in groups if g["params"]]

    def build(self, params, run) -> torch.optim.Optimizer:
        params = list(params)
        if self.opts.lr <= 0:  # type: ignore[attr-defined]
            raise RtlabError(f"optimizer.lr must be positive, got {self.opts.lr}")  # type: ignore[attr-defined]
        optimizer = self.make(self.param_groups(params, run), self.opts, _fused_ok(params, run, self.cpu_fused))
        optimizer.register_load_state_dict_post_hook(match_param_layout)
        return optimizer

    def make(self, params: list, opts, kernel: dict) -> torch.optim.Optimizer:
        """The torch optimiser; ``kernel`` selects fused (CUDA; the CPU for AdamW) or multi-tensor (foreach)
        updates."""
        raise NotImplementedError

    def schedule(self, optimizer: torch.optim.Optimizer, run) -> None:
        o = self.opts
        if o.final_weight_decay is not None:
            wd = cosine_value(o.weight_decay, o.final_weight_decay, run.step, run.total_steps)  # type: ignore
            for group in optimizer.param_groups:
                if group.get("decayed", True):
                    group["weight_decay"] = wd
        if o.schedule == "constant" and not o.warmup_epochs:
            return
        f = lr_factor(o, run.step, run.steps_per_epoch, run.total_steps)
        base = o.lr  # type: ignore[attr-defined]
        lr = o.min_lr + (base - o.min_lr) * f if o.schedule == "cosine" else base * f
        for group in optimizer.param_groups:
            group["lr"] = lr

    def step(self, optimizer: torch.optim.Optimizer, run) -> dict[str, torch.Tensor]:
        """Drop the frozen last layer's gradients, clip, step; logs the gradient norm when clipping."""
        logs: dict[str, torch.Tensor] = {}
        if self.last_layer and run.step < self.opts.freeze_last_layer_epochs * run.steps_per_epoch:
            for p in self.last_layer:
                p.grad = None
        if self.opts.clip_grad > 0:
            params = [p for p in self.params if p.grad is not None]
            if self.opts.clip_per_parameter and params:
                grads = [p.grad for p in params]
                norms = torch._foreach_norm(grads)
                scale = [(self.opts.clip_grad / (n + 1e-6)).clamp(max=1.0) for n in norms]
                torch._foreach_mul_(grads, scale)
                logs["grad_norm"] = torch.stack(norms).norm()
            elif params:
                logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.opts.clip_grad, foreach=True)
        optimizer.step()
        return logs


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """After loading a state: give every per-parameter state tensor its parameter's memory layout. A restored
    state comes back contiguous while channels-last weights are not, and the fused kernels walk state and weight
    memory in the same order (foreach ones follow the strides): without this, a fused run resumed from its
    training state diverges from the uninterrupted one (tests/test_resume.py)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _fused_ok(params: list, run, cpu_fused: bool = False) -> dict:
    """fused kernels on CUDA (and on the CPU where ``cpu_fused`` and torch has them), multi-tensor (foreach)
    elsewhere."""
    if not params or not all(p.is_floating_point() for p in params):
        return {"foreach": True}
    if run.device.type == "cuda" and all(p.is_cuda for p in params):
        return {"fused": True}
    if cpu_fused and run.device.type == "cpu" and all(p.device.type == "cpu" for p in params) \
            and cpu_fused_adamw_available():
        return {"fused": True}
    return {"foreach": True}


_CPU_FUSED: bool | None = None


def cpu_fused_adamw_available() -> bool:
    """Whether this torch has the fused AdamW kernel for the CPU (torch >= 2.4). Its result equals the foreach
    kernel's to within one float32 rounding per step (``tests/test_optimizers.py``), and it is 3-11x faster per
    step on this setting's parameters: foreach's per-element passes slow down on the denormal second moments of
    the last layer's tiny gradients, the fused kernel does one vectorised pass."""
    global _CPU_FUSED
    if _CPU_FUSED is None:
        try:
            p = torch.nn.Parameter(torch.zeros(2))
            p.grad = torch.ones(2)
            torch.optim.AdamW([p], fused=True).step()
            _CPU_FUSED = True
        except (RuntimeError, TypeError):
            _CPU_FUSED = False
    return _CPU_FUSED


@dataclass
class AdamWOptions(ScheduleOptions):
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


class AdamW(_Scheduled):
    """AdamW (the paper: lr 1e-3, no weight decay, constant schedule)."""

    cpu_fused = True

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
