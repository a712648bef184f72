"""Where decoded images live while a run trains (``data.storage``), and how a batch of them reaches the device.

* ``device`` — one uint8 tensor on the training device; a batch is an index slice (fastest when it fits);
* ``host`` — one uint8 tensor in host memory (pinned when training on CUDA); a background thread gathers the
  next batch by index and copies it to the device on a side stream while the current step runs;
* ``disk`` — the decoded cache file itself (:class:`framework._data.datacache.DiskImages`); the background thread
  reads the next batch's rows (this rank's shard only) and hands them over (pinned, copied on a side stream on
  CUDA). Memory holds a few batches, whatever the dataset's size;
* ``auto`` — ``device`` when the images fit the device budget, else ``host`` (CUDA only) when they fit the host
  budget, else ``disk``. Budgets: ``$RTLAB_MAX_DEVICE_BYTES`` (default: half the free CUDA memory, or half the
  available RAM on a CPU) and ``$RTLAB_MAX_HOST_BYTES`` (default: half the available RAM).

The loop asks a split for ``batch(index)`` and iterates ``ahead(order)``, which starts gathering batch k+1 while
batch k trains. Every mode returns the same uint8 values for the same indices, so runs are identical across modes.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import torch

from framework._nets import distributed
from framework._base.errors import RtlabError

log = logging.getLogger(__name__)

STORAGES = ("auto", "device", "host", "disk")


def available_ram() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` (bytes), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def env_bytes(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    try:
        if value[-1].lower() in units:
            return int(float(value[:-1]) * units[value[-1].lower()])
        return int(float(value))
    except ValueError:
        raise RtlabError(f"{name}={value!r} is not a size; give bytes or a number with K/M/G/T (e.g. 8G)") from None


def budgets(device: torch.device) -> tuple[int, int]:
    """(device budget, host budget) in bytes for the images of a run (see the module doc)."""
    host = env_bytes("RTLAB_MAX_HOST_BYTES")
    host = available_ram() // 2 if host is None else host
    dev = env_bytes("RTLAB_MAX_DEVICE_BYTES")
    if dev is None:
        if device.type == "cuda":
            dev = torch.cuda.mem_get_info(device)[0] // 2
        else:
            dev = host
    return dev, host


def choose_storage(requested: str, nbytes: int, device: torch.device, what: str) -> str:
    """The storage mode for ``nbytes`` of images; ``auto`` logs its choice and why."""
    if requested not in STORAGES:
        raise RtlabError(f"data.storage must be one of {', '.join(STORAGES)}, got '{requested}'")
    if requested != "auto":
        return requested
    dev, host = budgets(device)
    gib = 1 << 30
    if nbytes <= dev:
        mode, why = "device", f"{nbytes / gib:.2f} GiB fit the device budget of {dev / gib:.2f} GiB"
    elif device.type != "cpu" and nbytes <= host:
        mode, why = "host", (f"{nbytes / gib:.2f} GiB exceed the device budget of {dev / gib:.2f} GiB and fit the "
                             f"host budget of {host / gib:.2f} GiB")
    else:
        mode, why = "disk", (f"{nbytes / gib:.2f} GiB exceed the {'device' if device.type == 'cpu' else 'host'} "
                             f"budget of {(dev if device.type == 'cpu' else host) / gib:.2f} GiB")
    log.info("%s: data.storage=auto chose %s (%s; caps: RTLAB_MAX_DEVICE_BYTES, RTLAB_MAX_HOST_BYTES)",
             what, mode, why)
    return mode


class BatchReader:
    """Gathers batches of ``images`` (a host tensor or :class:`~framework._data.datacache.DiskImages`) by index on a
    background thread and delivers them on ``device``; one batch ahead of the loop."""

    def __init__(self, images: Any, device: torch.device) -> None:
        self.images, self.device = images, device
        self.cuda = device.type == "cuda"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rtlab-batches")
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pending: dict[tuple[int, int], Future] = {}
        self._base: torch.Tensor | None = None
        self._base_cpu: torch.Tensor | None = None

    def _cpu_index(self, index: torch.Tensor) -> torch.Tensor:
        """``index`` on the CPU; a slice of an epoch permutation is read from a CPU mirror made once per epoch,
        so the loop never waits for the device to copy a small index back."""
        if index.device.type == "cpu":
            return index
        base = index._base if index._base is not None else index
        if base.ndim != 1 or not base.is_contiguous() or not index.is_contiguous():
            return index.cpu()
        if base is not self._base:
            self._base, self._base_cpu = base, base.cpu()
        offset = index.storage_offset() - base.storage_offset()
        return self._base_cpu[offset:offset + index.numel()]

    def _gather(self, index: torch.Tensor) -> tuple[torch.Tensor, Any]:
        n = int(index.numel())
        out = torch.empty((n, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.cuda)
        if isinstance(self.images, torch.Tensor):
            torch.index_select(self.images, 0, index, out=out)
        else:
            self.images.read(index, out)
        if not self.cuda:
            return out, None
        with torch.cuda.stream(self.stream):
            moved = out.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, (event, out)  # out stays referenced until the copy is waited for

    @staticmethod
    def _key(index: torch.Tensor) -> tuple[int, int]:
        return index.data_ptr(), index.numel()

    def _submit(self, batch: torch.Tensor) -> None:
        index = distributed.shard(batch)
        self.pending[self._key(index)] = self.pool.submit(self._gather, self._cpu_index(index))

    def ahead(self, order: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The batches of ``order``, the next one's images already being gathered while the current one trains."""
        it = iter(order)
        self.pending.clear()
        try:
            nxt = next(it, None)
            if nxt is not None:
                self._submit(nxt)
            while nxt is not None:
                cur, nxt = nxt, next(it, None)
                if nxt is not None:
                    self._submit(nxt)
                yield cur
        finally:
            self.pending.clear()

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images ``index`` on the device (prefetched by :meth:`ahead`, else gathered now)."""
        future = self.pending.pop(self._key(index), None)
        images, sync = future.result() if future is not None else self._gather(self._cpu_index(index))
        if sync is not None:
            torch.cuda.current_stream(self.device).wait_event(sync[0])
            images.record_stream(torch.cuda.current_stream(self.device))
        return images


def place_images(images: Any, mode: str, device: torch.device) -> tuple[Any, BatchReader | None]:
    """(images as the mode keeps them, the reader that delivers their batches or None for ``device``)."""
    if mode == "device":
        return images.to(device), None
    if mode == "host":
        if not isinstance(images, torch.Tensor):  # read straight into (pinned) host memory
            out = torch.empty(tuple(images.shape), dtype=torch.uint8, pin_memory=device.type == "cuda")
            images = images.read(range(len(images)), out)
        elif device.type == "cuda" and not images.is_pinned():
            images = images.cpu().pin_memory()
        else:
            images = images.cpu()
        return images, BatchReader(images, device)
    if mode == "disk":
        if isinstance(images, torch.Tensor):
            raise RtlabError("data.storage=disk needs the decoded cache file; leave data.cache=true")
        return images, BatchReader(images, device)
    raise RtlabError(f"data.storage must be one of {', '.join(STORAGES)}, got '{mode}'")
