"""Batched image augmentations on the training device: small composable objects, usable without rtlab's loop.

Every op is called as ``op(images, generator)`` on float images in [0, 1] of shape (B, C, H, W) and draws all of
its randomness — one draw per image — from ``generator`` (a ``torch.Generator`` on the images' device), so the same
generator state gives the same views. Nothing here touches PIL or loops over images in Python.

The ops follow torchvision's definitions (the ones DINO's pipeline uses): ``RandomResizedCrop`` (area scale and
log-uniform aspect ratio, 10 tries, then a centre crop), ``HorizontalFlip``, ``PadCrop`` (zero padding, then a
random crop of the original size), ``ColorJitter`` (brightness, contrast, saturation and hue factors applied in a
random order per image), ``RandomGrayscale`` (ITU-R 601 luma), ``GaussianBlur`` (σ uniform per image, separable
kernel, reflected borders) and ``Solarize`` (invert pixels ≥ 128/255). Resampling is bilinear without
antialiasing.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


def uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def chance(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    """A boolean per image, True with probability ``p`` (always drawn, so the stream does not depend on p)."""
    return torch.rand(n, generator=generator, device=device) < p


def _mask(m: torch.Tensor) -> torch.Tensor:
    return m.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images as one channel (single-channel images pass through)."""
    if x.shape[1] != 3:
        return x
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class RandomResizedCrop:
    """A crop of random area fraction ``scale`` and aspect ratio ``ratio``, resized to ``size`` x ``size``."""

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10) -> None:
        if size <= 0 or not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop: bad size {size}, scale {scale} or ratio {ratio}")
        self.size, self.scale, self.ratio, self.attempts = size, tuple(scale), tuple(ratio), attempts

    def boxes(self, n: int, height: int, width: int, generator: torch.Generator, device
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top, left, h, w) in pixels per image, torchvision's sampling vectorised over the tries."""
        k = self.attempts
        area = height * width
        target = area * uniform(n * k, *self.scale, generator, device).view(n, k)
        log_r = uniform(n * k, math.log(self.ratio[0]), math.log(self.ratio[1]), generator, device).view(n, k)
        aspect = log_r.exp()
        w = (target * aspect).sqrt().round()
        h = (target / aspect).sqrt().round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
        # torchvision's fallback: the whole image, cropped to the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        pick = first.clamp(min=0).unsqueeze(1)
        valid = first >= 0
        h = torch.where(valid, h.gather(1, pick).squeeze(1), torch.full_like(first, fh, dtype=h.dtype))
        w = torch.where(valid, w.gather(1, pick).squeeze(1), torch.full_like(first, fw, dtype=w.dtype))
        u = torch.rand(2, n, generator=generator, device=device)
        top = torch.where(valid, (u[0] * (height - h + 1)).floor(), ((height - h) / 2).round())
        left = torch.where(valid, (u[1] * (width - w + 1)).floor(), ((width - w) / 2).round())
        return top, left, h, w

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        top, left, h, w = self.boxes(n, height, width, generator, x.device)
        return crop_and_resize(x, top, left, h, w, self.size)


def crop_and_resize(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                    size: int) -> torch.Tensor:
    """Per-image boxes (pixel units) resampled bilinearly to ``size`` x ``size`` in one ``grid_sample``."""
    n, _, height, width = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


class HorizontalFlip:
    """Mirror each image left–right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = chance(len(x), self.p, generator, x.device)
        return torch.where(_mask(flip), x.flip(-1), x)


class PadCrop:
    """Zero-pad by ``pad`` pixels, then crop the original size at a random offset (the CIFAR recipe)."""

    def __init__(self, pad: int = 4) -> None:
        self.pad = pad

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pad <= 0:
            return x
        n, c, h, w = x.shape
        padded = F.pad(x, (self.pad,) * 4)
        off = torch.randint(0, 2 * self.pad + 1, (2, n), generator=generator, device=x.device)
        rows = (off[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (off[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        picked = padded.gather(2, rows.expand(n, c, h, w + 2 * self.pad))
        return picked.gather(3, cols.expand(n, c, h, w))


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images by ``shift`` (fractions of a turn, per image), through HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    # HSV → RGB: channel k is v − v·s·clamp(min(k', 4 − k'), 0, 1) with k' = (k + 6h) mod 6, k = 5, 3, 1
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + 6.0 * hue.unsqueeze(1)) % 6
    weight = torch.minimum(k, 4.0 - k).clamp(0, 1)
    return maxc.unsqueeze(1) * (1 - sat.unsqueeze(1) * weight)


class ColorJitter:
    """torchvision's ColorJitter applied with probability ``p``: brightness, contrast, saturation and hue, each
    with a factor drawn per image, in a random order per image. Saturation and hue leave gray images alone."""

    def __init__(self, p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1) -> None:
        if not 0 <= hue <= 0.5 or min(brightness, contrast, saturation) < 0:
            raise ValueError("ColorJitter: brightness/contrast/saturation must be >= 0 and hue in [0, 0.5]")
        self.p, self.brightness, self.contrast, self.saturation, self.hue = p, brightness, contrast, saturation, hue

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, dev = len(x), x.device
        apply = chance(n, self.p, generator, dev)
        factors = [uniform(n, max(0.0, 1 - s), 1 + s, generator, dev)
                   for s in (self.brightness, self.contrast, self.saturation)]
        shift = uniform(n, -self.hue, self.hue, generator, dev)
        order = torch.rand(n, 4, generator=generator, device=dev).argsort(1)
        rgb = x.shape[1] == 3
        ops = [
            lambda y: (y * factors[0].view(-1, 1, 1, 1)).clamp(0, 1),
            lambda y: _blend(y, grayscale(y).mean((1, 2, 3), keepdim=True), factors[1]),
            (lambda y: _blend(y, grayscale(y), factors[2])) if rgb else (lambda y: y),
            (lambda y: adjust_hue(y, shift)) if rgb else (lambda y: y),
        ]
        out = x
        for position in range(4):
            for k, op in enumerate(ops):
                out = torch.where(_mask(order[:, position] == k), op(out), out)
        return torch.where(_mask(apply), out, x)


class RandomGrayscale:
    """Replace RGB images by their luma (on all three channels) with probability ``p``."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        gray = chance(len(x), self.p, generator, x.device)
        if x.shape[1] != 3:
            return x
        return torch.where(_mask(gray), grayscale(x).expand_as(x), x)


class GaussianBlur:
    """Blur with probability ``p`` with a Gaussian of σ uniform in ``sigma`` (pixels) per image."""

    def __init__(self, p: float = 0.5, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"GaussianBlur: sigma range {sigma} must be positive and ordered")
        self.p, self.sigma = p, tuple(sigma)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        blur = chance(n, self.p, generator, x.device)
        sigma = uniform(n, *self.sigma, generator, x.device)
        radius = max(1, math.ceil(3 * self.sigma[1]))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, K)
        mode = "reflect" if radius < min(h, w) else "replicate"
        y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode=mode)
        y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
        y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)
        return torch.where(_mask(blur), y, x)


class Solarize:
    """Invert the pixels at or above ``threshold`` with probability ``p`` per image."""

    def __init__(self, p: float = 0.2, threshold: float = 128 / 255) -> None:
        self.p, self.threshold = p, threshold

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sol = chance(len(x), self.p, generator, x.device)
        return torch.where(_mask(sol) & (x >= self.threshold), 1 - x, x)


class Compose:
    """Ops applied in order."""

    def __init__(self, ops: Sequence) -> None:
        self.ops = list(ops)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for op in self.ops:
            x = op(x, generator)
        return x
