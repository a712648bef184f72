"""Where and in what precision a run computes: the device, the autocast dtype, deterministic kernels."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from framework._base.errors import RtlabError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RtlabError(f"train.device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RtlabError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    return dev


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of x86 bf16 units


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16): there bf16 autocast is ~1.8-2.5x
    faster than fp32 for the ResNets of these studies; elsewhere torch emulates bf16 and it is slower. torch's own
    checks where it has them, else the kernel's CPU flags."""
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(p is not None for p in probes):
        return any(bool(p()) for p in probes if p is not None)
    try:
        with open("/proc/cpuinfo") as f:
            return cpuinfo_has_bf16(f.read())
    except OSError:
        return False


def cpuinfo_has_bf16(text: str) -> bool:
    """Whether the ``flags`` lines of a /proc/cpuinfo text name an x86 bf16 unit (:data:`BF16_CPU_FLAGS`)."""
    flags = {w for line in text.splitlines() if line.startswith("flags") for w in line.split(":", 1)[-1].split()}
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = no autocast: fp32, or fp64 networks). ``auto``: bf16 on CUDA GPUs that support
    it and on CPUs with bf16 units (:func:`cpu_has_bf16_units`), fp32 elsewhere. On the CPU the run then checks
    the network with :func:`cpu_bf16_hazards` and falls back to fp32 where torch's bf16 kernels are unsafe."""
    table = {"fp32": None, "fp64": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_units() else None
    if precision not in table:
        raise RtlabError(f"train.precision must be auto, fp32, bf16, fp16 or fp64, got '{precision}'")
    if precision == "fp16" and device.type == "cpu":
        raise RtlabError("train.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if precision == "fp64" and device.type == "mps":
        raise RtlabError("train.precision=fp64 is not supported on MPS; use train.device=cpu or a CUDA GPU")
    return table[precision]


def cpu_bf16_hazards(net: nn.Module, example: torch.Tensor) -> list[str]:
    """Strided convolutions that see 1x1 inputs: in torch 2.14's CPU bf16 kernels their backward pass returns
    non-finite gradients about half of the time (measured: 100 of 200 steps for a 3x3/stride-2 conv)."""
    hits: list[str] = []
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and max(m.kernel_size) > 1:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: hits.append(name) if inp[0].shape[-2:] == (1, 1) else None))
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(example)
    finally:
        net.train(was)
        for h in hooks:
            h.remove()
    return hits


def cpu_load() -> tuple[int, float] | None:
    """(usable cores, 1-minute load average), or None where the platform has no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, load


def safe_cpu_threads(current: int, cores: int, load: float) -> int | None:
    """The thread count for a CPU with fewer free cores than torch's ``current`` threads, or None to keep
    ``current``. Free cores: ``cores`` minus the load of other work, rounded (the load average counts this process
    too, up to 1).

    torch's intra-op pool synchronises its threads at every op; on cores already busy with other work the threads
    wait for each other's time slices (measured on 2 busy cores: 2 threads 19x slower than 1), so the pool shrinks
    to the cores that are free, at least one."""
    free = round(cores - max(0.0, load - 1.0))
    if current <= 1 or free >= current:
        return None
    return max(1, free)


def enable_determinism(device: torch.device) -> None:
    """Deterministic kernels everywhere (an op without one raises instead of silently varying)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """torch's CPU operations on one thread inside the block, the previous count restored after: for runs of
    small or memory-bound operations, which more threads do not speed up but end each in a barrier — one that waits
    for a descheduled thread whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
