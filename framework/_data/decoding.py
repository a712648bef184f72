"""Pixel operations of the data path: PIL image → uint8 tensor, resizing, channels, per-channel statistics.

Shared by the decode into the cache (:mod:`framework._data.data`) and the streaming reader (:mod:`framework._data.streaming`),
so that every storage mode produces the same uint8 values for the same image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from framework._base.errors import RtlabError


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., C, H, W): shorter side to ``size`` (antialiased bilinear), then a centred size x size crop."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    squeeze = img.ndim == 3
    x = img.unsqueeze(0) if squeeze else img
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size].round_().clamp_(0, 255).to(torch.uint8)
    return x[0] if squeeze else x


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to ``channels`` (gray ↔ RGB with ITU-R 601 luma, alpha dropped)."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 4:
        x, c = x[:, :3], 3
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    if c == channels:
        return x
    raise RtlabError(f"cannot convert {c}-channel images to {channels} channels; set data.channels to 1 or 3")


def _array_batch(arr: np.ndarray) -> torch.Tensor:
    """A batch of array images (N,H,W) | (N,H,W,C) | (N,C,H,W), uint8 or float in [0,1], as uint8 NCHW."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4:
        raise RtlabError(f"image arrays of shape {arr.shape[1:]} are not images; set data.image_column")
    return torch.from_numpy(np.ascontiguousarray(arr))


GRAY_MODES = ("L", "1", "I", "I;16", "F", "LA")


def image_tensor(im: Any, image_size: int | None) -> tuple[torch.Tensor, bool]:
    """(uint8 3 x H x W of a PIL image as RGB, resized as ``data.image_size`` says; whether it was gray)."""
    arr = np.asarray(im.convert("RGB"))
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return (resize_center_crop(t, image_size) if image_size else t), im.mode in GRAY_MODES


def check_size(t: torch.Tensor, size: tuple[int, int] | None, what: str) -> tuple[int, int]:
    """The split's image size so far (the first image's); refuses an image of another size."""
    if size is not None and tuple(t.shape[-2:]) != size:
        raise RtlabError(f"{what} has images of different sizes ({size[0]}x{size[1]} and "
                         f"{t.shape[-2]}x{t.shape[-1]}); set data.image_size=N to resize them")
    return tuple(t.shape[-2:])  # type: ignore[return-value]


def finish_channels(images: torch.Tensor, is_image: bool, all_gray: bool, channels: int | None) -> torch.Tensor:
    """The whole-split channel step: all-gray image files keep one channel, alpha goes, then ``data.channels``."""
    if is_image and all_gray:
        images = images[:, :1].contiguous()
    if images.shape[1] == 4:
        images = images[:, :3].contiguous()
    if channels:
        if channels not in (1, 3):
            raise RtlabError(f"data.channels must be 1 or 3, got {channels}")
        images = _to_channels(images, channels)
    return images


def channel_stats(images: Any, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (a tensor or :class:`DiskImages`), in [0, 1] units; chunks of at
    most 64 MB of float64."""
    c = images.shape[1]
    chunk = max(1, min(chunk, (1 << 23) // max(1, int(np.prod(images.shape[1:])))))
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].to(torch.float64) / 255.0
        s += x.sum((0, 2, 3))
        s2 += x.pow(2).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / count
    std = (s2 / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(max(float(v), 1e-3) for v in std)
