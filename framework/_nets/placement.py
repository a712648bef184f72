"""Where tensors and networks go: a run's device, parameter dtype, autocast dtype and memory format in one value.

A run builds one :class:`Placement` from ``train.device``/``train.precision``/``train.channels_last``; feature
extraction and analyses outside a run build their own (``Placement.of(device="cpu")``), so embeddings are computed
the same way in and out of training.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from framework._nets.device import resolve_device, resolve_dtype


@dataclass(frozen=True)
class Placement:
    """``device`` for data and networks; ``dtype`` of parameters and inputs (float32, or float64 for fp64 runs);
    ``amp_dtype`` the autocast dtype (None: none); ``channels_last`` the memory format of 4-d tensors;
    ``normalize`` the default normalisation of uint8 or [0, 1] images (None: scale to [0, 1] only)."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def of(cls, device: str | torch.device = "auto", precision: str = "fp32", channels_last: bool = False,
           normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "Placement":
        """From the config's words: ``device`` auto|cpu|cuda|…, ``precision`` auto|fp32|bf16|fp16|fp64."""
        dev = resolve_device(device) if isinstance(device, str) else device
        return cls(dev, torch.float64 if precision == "fp64" else torch.float32, resolve_dtype(precision, dev),
                   channels_last, normalize)

    def with_(self, **changes: Any) -> "Placement":
        return replace(self, **changes)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast in ``amp_dtype`` (a no-op without one)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        """uint8 (or [0, 1] float) images → normalised float on ``device`` in ``dtype`` and the memory format.
        ``normalize`` defaults to the placement's own (probe datasets bring theirs)."""
        x = images.to(self.device, non_blocking=True)
        norm = normalize or self.normalize
        if norm is not None:
            x = norm(x)
        elif x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def place(self, net: nn.Module) -> nn.Module:
        """``net`` on ``device`` in ``dtype`` and the memory format (in place, returned)."""
        net = net.to(self.device, dtype=self.dtype)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net
