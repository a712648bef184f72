"""Normalisation layers for the norm-layer swap (``backbone.norm``, docs/paper.md#fig-11), as the reference code
defines them. Each takes the channel count first, as timm's ``norm_layer`` arguments do.

* ``batchnorm`` — ``BatchNorm2d`` (batch statistics in training, running statistics in eval mode);
* ``groupnorm8`` — ``GroupNorm`` with groups of 8 channels (the reference code's "GroupNorm8": C/8 groups);
* ``instancenorm`` — ``GroupNorm(C, C)``: every channel of every image on its own, affine, no running statistics;
* ``layernorm`` — ``GroupNorm(1, C)``: all channels and positions of an image together;
* ``identity`` — no normalisation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from framework.api import unknown_name


class GroupNorm8(nn.GroupNorm):
    """Groups of 8 channels."""

    def __init__(self, num_channels: int, **kwargs: Any) -> None:
        super().__init__(max(1, num_channels // 8), num_channels, **kwargs)


class InstanceNorm(nn.GroupNorm):
    """One group per channel."""

    def __init__(self, num_channels: int, **kwargs: Any) -> None:
        super().__init__(num_channels, num_channels, **kwargs)


class LayerNorm(nn.GroupNorm):
    """One group for all channels."""

    def __init__(self, num_channels: int, **kwargs: Any) -> None:
        super().__init__(1, num_channels, **kwargs)


class NoNorm(nn.Identity):
    """No normalisation (takes and ignores the channel count)."""

    def __init__(self, num_channels: int = 0, **kwargs: Any) -> None:
        super().__init__()


NORM_LAYERS: dict[str, type[nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "groupnorm8": GroupNorm8,
    "instancenorm": InstanceNorm,
    "layernorm": LayerNorm,
    "identity": NoNorm,
}


def norm_layer(name: str) -> type[nn.Module]:
    """The layer class for ``backbone.norm=name``."""
    if name not in NORM_LAYERS:
        raise unknown_name("backbone.norm", name, NORM_LAYERS)
    return NORM_LAYERS[name]
