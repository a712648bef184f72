"""DistributedDataParallel for the trained networks, and BatchNorm over the global batch (``train.sync_bn``).

:func:`loss_forward` is how the loop computes a step's loss. One process: the objective's ``loss`` itself, no
wrapper. Several: the student and the objective's own parameters (a predictor) are one module, :class:`TrainedNets`,
whose ``forward`` is the objective's loss, wrapped once in ``torch.nn.parallel.DistributedDataParallel``: DDP's
bucketed all-reduces start during the backward pass, as soon as a bucket's gradients are ready. Because the whole
loss is one DDP forward, objectives may run the student any number of times (multi-crop: one pass per crop size)
with no ``no_sync`` or re-entrant forward; ``static_graph`` lets DDP skip the search for unused parameters after
the first step. The student stays the plain module: checkpoints keep its parameter names, evaluation calls it
directly.

``train.sync_bn=true`` turns every BatchNorm of the student, the teacher and the objective into
:class:`GlobalBatchNorm` when several processes train: inside a training step it normalises with the statistics of
the global batch (one differentiable all-reduce of the per-channel sums, on any device; torch's ``SyncBatchNorm``
refuses CPU tensors), outside (evaluation, the BN control) it is plain BatchNorm. Parameter and
buffer names do not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from framework._nets import distributed

if TYPE_CHECKING:
    from framework._run.internals import RunInternals as Run


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (of any input rank) with the global batch's statistics inside a training step of several
    processes: the per-channel sums, sums of squares and the row count are all-reduced in one differentiable
    collective. (torch's ``SyncBatchNorm`` refuses CPU tensors, and DDP refuses it on CPU modules.)"""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.in_step() and distributed.active()):
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]
        channels = x.shape[1]
        acc = x if x.dtype == torch.float64 else x.float()  # sums of squares in at least float32
        count = acc.new_full((1,), x.numel() / channels)
        sums = distributed.all_reduce_with_grad(torch.cat([acc.sum(dims), (acc * acc).sum(dims), count]))
        n = float(sums[-1])
        mean = sums[:channels] / n
        var = sums[channels:2 * channels] / n - mean * mean
        shape = [1, channels] + [1] * (x.ndim - 2)
        y = (acc - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / (n - 1) if n > 1 else 1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by a :class:`GlobalBatchNorm` holding the same parameters and
    buffers (the same tensors: optimisers and EMA updaters built before keep working)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        bn = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        for hook in ("_forward_pre_hooks", "_forward_hooks"):
            getattr(bn, hook).update(getattr(module, hook))
        return bn
    for name, child in module.named_children():
        new = convert_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class TrainedNets(nn.Module):
    """The student and the objective's own trained parameters as one module; ``forward`` is the objective's loss."""

    def __init__(self, run: "Run") -> None:
        super().__init__()
        self.student = run.student
        if isinstance(run.objective, nn.Module):
            self.objective = run.objective
        covered = {id(p) for p in self.parameters()}
        self.extra = nn.ParameterList([p for p in run.trainable if id(p) not in covered])
        self._run = [run]  # in a list: the run is not a submodule

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> Any:
        run = self._run[0]
        return run.objective.loss(run, views, index)


def loss_forward(run: "Run") -> Callable[[list[torch.Tensor], torch.Tensor], Any]:
    """``(views, index) -> (loss, logs)`` for the loop: the objective's loss, through DDP when several processes
    train (built once per run, after setup and ``prepare``)."""
    if not distributed.active():
        return lambda views, index: run.objective.loss(run, views, index)
    nets = TrainedNets(run)
    cuda = run.device.type == "cuda"
    ddp = nn.parallel.DistributedDataParallel(
        nets, device_ids=[run.device.index] if cuda else None,
        broadcast_buffers=not run.cfg.train.sync_bn,  # with global BN the buffers agree; else rank 0's, as DDP does
        static_graph=True)

    def forward(views: list[torch.Tensor], index: torch.Tensor) -> Any:
        with distributed.syncing():
            return ddp(views, index)

    return forward


def views_of(run: "Run", batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(this process's shard of the global ``batch``, its views). Random views are drawn for the global batch,
    so that every process's stream advances alike and each image gets the views one process would give it."""
    if run.world_size == 1 or getattr(run.augment, "deterministic", False):
        index = distributed.shard(batch)
        images = run.data.train.batch(index).float().div_(255.0)  # prefetched by host/disk storage
        return index, [run.prepare(v) for v in run.augment.views(images, run.aug_gen)]
    views = run.augment.views(run.data.train.batch(batch).float().div_(255.0), run.aug_gen)
    index = distributed.shard(batch)
    start = sum(len(s) for s in batch.tensor_split(run.world_size)[:run.rank])
    return index, [run.prepare(v[start:start + len(index)]) for v in views]
