"""The supervised recipe's augmentation (PAPER.md §6, App. E.5), batched on the training device.

``flip_crop``: one view per image — a random horizontal flip (probability ``flip``) and a random crop, at the
input size, of the image zero-padded by ``pad`` pixels on every side (torchvision's ``RandomCrop(padding=4)`` +
``RandomHorizontalFlip``), drawn per image from the run's augmentation stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError


def flip_pad_crop(images: torch.Tensor, pad: int, flip: float, generator: torch.Generator) -> torch.Tensor:
    """Randomly flipped and padded-then-cropped copies of ``images`` (B, C, H, W), one draw per image."""
    b, c, h, w = images.shape
    dev = images.device
    out = images
    if flip > 0:
        flips = torch.rand(b, device=dev, generator=generator) < flip
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
    if pad > 0:
        padded = F.pad(out, (pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        left = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        rows = (top.view(b, 1) + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = (left.view(b, 1) + torch.arange(w, device=dev)).view(b, 1, 1, w)
        batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
        chans = torch.arange(c, device=dev).view(1, c, 1, 1)
        out = padded[batch, chans, rows, cols]
    return out


@dataclass
class FlipCropOptions:
    pad: int = 4  # zero padding before the random crop back to the input size (0 = no crop)
    flip: float = 0.5  # probability of a horizontal flip (0 = none)


class FlipCrop:
    """Random horizontal flip and padded random crop (the standard CIFAR supervised augmentation)."""

    deterministic = False

    def __init__(self, opts: FlipCropOptions) -> None:
        if opts.pad < 0 or not 0.0 <= opts.flip <= 1.0:
            raise RtlabError(f"augment.pad must be >= 0 and augment.flip in [0, 1], got {opts.pad} and "
                             f"{opts.flip}")
        self.opts = opts

    def views(self, images, generator):
        return [flip_pad_crop(images, self.opts.pad, self.opts.flip, generator)]


@hookimpl
def rtlab_register(registry):
    registry.add("augment", "flip_crop", FlipCrop, FlipCropOptions)
