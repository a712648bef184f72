"""Data-parallel training across processes launched by ``torchrun`` (one process per device).

Every process holds the whole dataset on its device and draws the same global batch (the data-order stream is
seeded identically); each trains on its own contiguous shard of that batch. After the backward pass the gradients
are summed across processes, each weighted by its shard's share of the global batch, so the update equals the
one-process update on the global batch (exactly so for networks without batch-coupled layers: BatchNorm in train
mode normalises each shard with its own statistics, as in standard DistributedDataParallel training). Evaluation
embeds each process's share of the images and gathers the features; the evaluators run on rank 0, whose results
are sent to the others. Only rank 0 writes files and fires life-cycle hooks.

Single-process runs never touch ``torch.distributed``: every helper here is then a no-op.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init(prefer_cuda: bool = True) -> None:
    """Join the process group torchrun describes (gloo for CPU tensors, NCCL for CUDA ones)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if prefer_cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def local_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when training on CUDA."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of a global batch (sizes differ by at most one)."""
    if not active():
        return batch
    return batch.tensor_split(world_size())[rank()]


def reduce_gradients(params: Iterable[torch.nn.Parameter], weight: float) -> None:
    """Sum ``weight`` x gradient over processes, in place, in one collective (weight = local / global batch)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).mul_(weight)
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def all_reduce_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum tensors over processes, in place."""
    if not active():
        return
    for t in tensors:
        dist.all_reduce(t)


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """The row-wise concatenation, in rank order, of every process's ``local`` (row counts may differ)."""
    if not active():
        return local
    n = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (picklable Python objects: small results only)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
