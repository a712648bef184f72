"""Data-parallel training across processes launched by ``torchrun`` or ``srun`` (one process per device).

Every process holds the whole dataset on its device and draws the same global batch (the data-order and
augmentation streams are seeded identically and advance identically: the views are drawn for the global batch and
each process keeps its contiguous shard of them). The trained networks are wrapped in
``torch.nn.parallel.DistributedDataParallel`` (:mod:`framework._run.parallel`): bucketed gradient all-reduces overlap the
backward pass. DDP averages the processes' gradients, so each process scales its loss by ``world_size × share``
(its share of the global batch) before the backward pass: the update equals the one-process update on the global
batch, also for unequal shards (the last batch). Losses that couple the images of a batch make themselves global
with the collectives here (:func:`gather_with_grad`, :func:`all_reduce_with_grad`); BatchNorm is global with
``train.sync_bn=true``, per shard otherwise. Evaluation embeds each process's share of the images and gathers the
features; the evaluators run on rank 0, whose results are sent to the others. Only rank 0 writes files and fires
life-cycle hooks.

Launchers: ``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; under ``srun``
(without torchrun) the same are derived from ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` and the first
host of ``SLURM_NODELIST`` (port: ``MASTER_PORT``, else one derived from ``SLURM_JOB_ID``), see :func:`slurm_env`.

Single-process runs never touch ``torch.distributed``: every helper here is then a no-op.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` or ``srun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or bool(slurm_env())


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list in its compressed form (``gpu[07-09,12],cpu1`` → ``gpu07``)."""
    head = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist.strip())
    prefix, ranges = head.group(1), head.group(3)
    return prefix if not ranges else prefix + ranges.split(",")[0].split("-")[0]


def _slurm_master(nodelist: str) -> str:
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return first_host(nodelist)


def slurm_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables of a task started by ``srun`` with several tasks (empty otherwise, and
    under torchrun, which sets them itself). Only a job step counts (``SLURM_STEP_ID`` is set): the batch script
    of a multi-task allocation is one process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env or "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        return {}
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if tasks <= 1:
        return {}
    nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST", "localhost")))
    port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(tasks), "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _slurm_master(nodes), "MASTER_PORT": port}


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init(prefer_cuda: bool = True) -> None:
    """Join the process group torchrun or srun describes (gloo for CPU tensors, NCCL for CUDA ones)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    os.environ.update(slurm_env())
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


def row_counts(n: int, device: torch.device) -> list[int]:
    """Every process's row count ``n``, in rank order."""
    local = torch.tensor([n], device=device)
    counts = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(counts, local)
    return [int(c.item()) for c in counts]


class _GatherRows(torch.autograd.Function):
    """All processes' rows, concatenated in rank order; the gradient of each row goes back to its process, summed
    over every process's loss (an all-reduce of the whole gradient, then this process's slice)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        most = max(counts)
        padded = local.new_zeros((most, *local.shape[1:]))
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        ctx.start = sum(counts[:rank()])
        ctx.rows = len(local)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.start + ctx.rows], None


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every process's ``local`` rows concatenated in rank order, the index of this process's first row), with
    gradients flowing back to each process's rows (row counts may differ). One process: ``(local, 0)``."""
    if not active():
        return local, 0
    counts = row_counts(len(local), local.device)
    return _GatherRows.apply(local, counts), sum(counts[:rank()])


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over processes (out of place), differentiable: each process's ``x`` receives the gradient of
    every process's loss with respect to the sum. One process: ``x``."""
    return _AllReduceSum.apply(x) if active() else x


_syncing = False


@contextlib.contextmanager
def syncing() -> Iterator[None]:
    """Inside: a training step, where synchronised BatchNorm layers use the global batch's statistics (outside,
    e.g. in evaluation or on rank 0 alone, they are plain BatchNorm)."""
    global _syncing
    was, _syncing = _syncing, True
    try:
        yield
    finally:
        _syncing = was


def in_step() -> bool:
    return _syncing


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
