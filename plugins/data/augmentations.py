"""Augmentations (kind ``augment``), batched on the training device with the ops of :mod:`plugins.data.augment_ops`.

* ``identity`` — one view, the image itself (the paper's "None (1 x 32²)");
* ``flip_crop`` — random horizontal flip and zero-padded random crop (the supervised CIFAR recipe, docs/paper.md#fig-8);
* ``multicrop`` — ``global_views`` large crops and ``local_views`` small ones (DINO's multi-crop), each with a
  random horizontal flip; colour augmentation is off unless its probabilities are set;
* ``dino`` — ``multicrop`` with DINO's defaults: 2 global crops (scale 0.4–1) and 10 local crops (scale 0.05–0.4,
  3/7 of the global size as DINO's 96/224), colour jitter (p 0.8; 0.4, 0.4, 0.2, 0.1), grayscale (p 0.2), Gaussian
  blur (p 1.0 / 0.1 / 0.5 for the first global, the other global and the local crops; σ 0.1–2 px) and
  solarisation (p 0.2 on the second global crop).

The global crops come first in the list of views (``global_views`` tells objectives which ones the teacher sees);
crops of one size are later run through a network as one batch. Every random draw comes from the run's
augmentation stream, so the same ``train.seed`` gives the same views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from framework.api import hookimpl, RtlabError
from plugins.data.augment_ops import (ColorJitter, Compose, GaussianBlur, HorizontalFlip, PadCrop, RandomGrayscale,
                                 RandomResizedCrop, Solarize)


@dataclass
class IdentityOptions:
    pass


class Identity:
    """One view per image, unchanged."""

    deterministic = True
    global_views = None

    def __init__(self, opts: IdentityOptions) -> None:
        self.opts = opts

    def views(self, images, generator):
        return [images]


@dataclass
class FlipCropOptions:
    pad: int = 4  # zero padding before the random crop (0: no crop)
    flip: float = 0.5  # probability of a horizontal flip
    views: int = 1  # independent views per image


class FlipCrop:
    """Random horizontal flip + padded random crop, ``views`` times per image."""

    deterministic = False
    global_views = None

    def __init__(self, opts: FlipCropOptions) -> None:
        if opts.pad < 0 or opts.views < 1 or not 0 <= opts.flip <= 1:
            raise RtlabError("augment.pad must be >= 0, augment.views >= 1 and augment.flip in [0, 1]")
        self.opts = opts
        self.pipeline = Compose([HorizontalFlip(opts.flip), PadCrop(opts.pad)])

    def views(self, images, generator):
        return [self.pipeline(images, generator) for _ in range(self.opts.views)]


@dataclass
class MultiCropOptions:
    global_views: int = 2
    global_size: Optional[int] = None  # None: the image size
    global_scale: Tuple[float, float] = (0.4, 1.0)  # area fraction of a global crop
    local_views: int = 0
    local_size: Optional[int] = None  # None: 3/7 of the global size (DINO's 96/224)
    local_scale: Tuple[float, float] = (0.05, 0.4)
    ratio: Tuple[float, float] = (0.75, 1.3333333333333333)  # aspect-ratio range of every crop
    flip: float = 0.5
    color_jitter: float = 0.0  # probability of colour jitter (DINO: 0.8)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale: float = 0.0  # probability (DINO: 0.2)
    # blur / solarise probabilities for [first global crop, other global crops, local crops]
    blur: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # DINO: [1.0, 0.1, 0.5]
    blur_sigma: Tuple[float, float] = (0.1, 2.0)  # σ range in pixels
    solarize: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # DINO: [0.0, 0.2, 0.0]


@dataclass
class DinoAugmentOptions(MultiCropOptions):
    local_views: int = 10
    color_jitter: float = 0.8
    grayscale: float = 0.2
    blur: List[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])
    solarize: List[float] = field(default_factory=lambda: [0.0, 0.2, 0.0])


@dataclass
class TwoViewOptions(MultiCropOptions):
    """Two random resized crops with the colour distortion SimCLR introduced (jitter p 0.8, grayscale p 0.2), the
    base of the joint-embedding methods' augmentations (``byol``, ``simclr``, ``simsiam``: plugins.methods)."""

    global_views: int = 2
    global_scale: Tuple[float, float] = (0.08, 1.0)
    color_jitter: float = 0.8
    grayscale: float = 0.2


class MultiCrop:
    """Global and local random resized crops, each flipped and colour-augmented as configured."""

    deterministic = False

    def __init__(self, opts: MultiCropOptions) -> None:
        if opts.global_views < 1 or opts.local_views < 0:
            raise RtlabError("augment.global_views must be >= 1 and augment.local_views >= 0")
        for name in ("blur", "solarize"):
            probs = getattr(opts, name)
            if len(probs) != 3 or not all(0 <= p <= 1 for p in probs):
                raise RtlabError(f"augment.{name} needs 3 probabilities in [0, 1] (first global, other global, "
                                 f"local crops), got {list(probs)}")
        self.opts = opts
        self.global_views = opts.global_views
        self._pipelines: dict[int, list] = {}

    def _pipeline(self, kind: int, size: int, scale) -> Compose:
        o = self.opts
        try:
            ops = [RandomResizedCrop(size, scale, o.ratio), HorizontalFlip(o.flip)]
            if o.color_jitter > 0:
                ops.append(ColorJitter(o.color_jitter, o.brightness, o.contrast, o.saturation, o.hue))
            if o.grayscale > 0:
                ops.append(RandomGrayscale(o.grayscale))
            if o.blur[kind] > 0:
                ops.append(GaussianBlur(o.blur[kind], o.blur_sigma))
            if o.solarize[kind] > 0:
                ops.append(Solarize(o.solarize[kind]))
        except ValueError as exc:
            raise RtlabError(f"augment: {exc}") from None
        return Compose(ops)

    def pipelines(self, image_size: int) -> list[Compose]:
        """One pipeline per view (global crops first) for images of ``image_size`` pixels."""
        if image_size not in self._pipelines:
            o = self.opts
            g = o.global_size or image_size
            local = o.local_size or max(1, round(g * 3 / 7))
            views = [self._pipeline(0 if i == 0 else 1, g, o.global_scale) for i in range(o.global_views)]
            views += [self._pipeline(2, local, o.local_scale) for _ in range(o.local_views)]
            self._pipelines[image_size] = views
        return self._pipelines[image_size]

    def views(self, images, generator):
        return [p(images, generator) for p in self.pipelines(min(images.shape[-2:]))]


@hookimpl
def rtlab_register(registry):
    registry.add("augment", "identity", Identity, IdentityOptions)
    registry.add("augment", "flip_crop", FlipCrop, FlipCropOptions)
    registry.add("augment", "multicrop", MultiCrop, MultiCropOptions)
    registry.add("augment", "dino", MultiCrop, DinoAugmentOptions,
                 doc="DINO's multi-crop and colour pipeline: 2 global + 10 local crops, jitter, grayscale, blur, "
                     "solarise")
