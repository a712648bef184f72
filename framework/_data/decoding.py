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


class PixelError(RtlabError):
    """Pixels that cannot be scaled to 8 bits; the caller adds which file or row they came from."""


def _finite_range(arr: np.ndarray, what: str) -> tuple[float, float]:
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PixelError(f"{what} hold NaN or infinite values; replace them with finite pixel values")
    return lo, hi


def _from_16_bits(arr: np.ndarray) -> np.ndarray:
    return ((arr.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257): 65535 -> 255


def scale_to_uint8(arr: np.ndarray, what: str, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel values of any depth as uint8, by the rule of their type (docs/configuration.md, "Pixel depths"):
    uint8 as they are; bool 0/255; uint16 — and any integers with ``sixteen_bit`` (Pillow's 32-bit mode "I",
    which holds 16-bit images) — from 0–65535 (divided by 257); other integers within 0–1 as 0/255 and within
    0–255 as they are; floats within 0–1 times 255, within 0–255 as they are. Anything else (negative or larger
    values, NaN, infinities: normalised or high-dynamic-range data) is refused with :class:`PixelError`."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return _from_16_bits(arr)
    lo, hi = _finite_range(arr, what)
    if arr.dtype.kind in "iu":
        if sixteen_bit and lo >= 0 and hi <= 65535:
            return _from_16_bits(arr)
        if not sixteen_bit and lo >= 0 and hi <= 1:
            return arr.astype(np.uint8) * np.uint8(255)
        if not sixteen_bit and lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        raise PixelError(f"{what} are {arr.dtype} integers from {lo:g} to {hi:g}, outside "
                         f"{'0–65535' if sixteen_bit else '0–255'}; save them as 8-bit (uint8) or 16-bit (uint16) "
                         "images")
    if arr.dtype.kind == "f":
        if lo >= 0 and hi <= 1:
            return np.rint(arr.astype(np.float32) * 255.0).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.rint(arr.astype(np.float32)).astype(np.uint8)
        raise PixelError(f"{what} are floats from {lo:.4g} to {hi:.4g}, outside [0, 1] and [0, 255] (normalised "
                         "or high-dynamic-range data?); rtlab reads raw pixels: rescale them to [0, 1] or 0–255")
    raise PixelError(f"{what} are of type {arr.dtype}, not pixel values; set data.image_column to the image column")


def declared_dtype(feat: Any) -> str | None:
    """The value type an array feature declares (uint16 for 16-bit images), None when it declares none."""
    while feat is not None and not isinstance(getattr(feat, "dtype", None), str):
        feat = getattr(feat, "feature", None)
    dtype = getattr(feat, "dtype", None)
    try:
        return dtype if dtype is not None and np.dtype(dtype).kind in "biuf" else None
    except TypeError:
        return None


def _array_batch(arr: np.ndarray) -> torch.Tensor:
    """A batch of array images (N,H,W) | (N,H,W,C) | (N,C,H,W) as uint8 NCHW, scaled as
    :func:`scale_to_uint8` says."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise PixelError("image arrays of mixed shapes or types are not images; set data.image_column")
    arr = scale_to_uint8(arr, "the image arrays")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4:
        raise RtlabError(f"image arrays of shape {arr.shape[1:]} are not images; set data.image_column")
    return torch.from_numpy(np.ascontiguousarray(arr))


# Pillow modes of one channel (with alpha) whose images count as gray; the high-depth ones are scaled to 8 bits
GRAY_MODES = ("L", "1", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
DEEP_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def pixels(im: Any) -> tuple[np.ndarray, bool]:
    """(uint8 H x W x 3 RGB array of a PIL image of any mode Pillow opens, whether the mode is gray).

    8-bit modes go through Pillow's own conversion (CMYK, YCbCr, LAB, HSV and palettes to RGB; alpha dropped);
    16-bit, 32-bit integer and float gray images are scaled by :func:`scale_to_uint8` (Pillow would clip them
    at 255). Pixels that cannot be scaled raise :class:`PixelError`."""
    mode = im.mode
    if mode in DEEP_MODES:
        gray = scale_to_uint8(np.asarray(im), f"the pixels of this mode-{mode} image", sixteen_bit=mode == "I")
        return np.repeat(gray[..., None], 3, axis=2), True
    try:
        rgb = (im.convert("LA") if mode == "La" else im).convert("RGB")
    except (ValueError, OSError) as exc:
        raise PixelError(f"Pillow cannot convert this mode-{mode} image to RGB ({exc}); save the images as RGB or "
                         "grayscale") from None
    return np.asarray(rgb), mode in GRAY_MODES


def image_tensor(im: Any, image_size: int | None) -> tuple[torch.Tensor, bool]:
    """(uint8 3 x H x W of a PIL image as RGB (:func:`pixels`), resized as ``data.image_size`` says; whether it
    was gray)."""
    arr, gray = pixels(im)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return (resize_center_crop(t, image_size) if image_size else t), gray


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
