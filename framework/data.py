"""The data path: any Hugging Face image dataset, decoded once to uint8 tensors that live on the training device.

A dataset source component returns ``datasets`` splits (hub id, local imagefolder, parquet/arrow, a
``save_to_disk`` folder or a built-in). This module finds the image and label columns, takes the stratified
subset, decodes every image once into a ``(N, C, H, W)`` uint8 tensor with int64 labels, caches that on disk
keyed by the dataset fingerprint, and normalises batches on the device. No PIL in the training loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from framework.bad_images import drop_rows, image_rows
from framework.errors import RtlabError
from framework.options import DataOptions
from framework.registry import Registry

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "images", "pixel_values", "pixels", "x", "input")
LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label", "target", "targets", "class", "y")
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$RTLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/rtlab``, else ``~/.cache/rtlab``."""
    if os.environ.get("RTLAB_CACHE_DIR"):
        return Path(os.environ["RTLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rtlab"


@dataclass
class ImageSplit:
    """Decoded images (uint8, N x C x H x W) and labels (int64, -1 where unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (data.skip_bad_images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device), self.skipped)

    @property
    def labelled(self) -> bool:
        return bool(len(self)) and bool((self.labels >= 0).all())


@dataclass
class ImageData:
    """A train and a test split with class names and the per-channel normalisation."""

    name: str
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "ImageData":
        return ImageData(self.name, self.train.to(device), self.test.to(device), self.classes, self.mean,
                         self.std, self.fingerprint, self.extra)

    def normalizer(self, device: torch.device | str) -> "Normalize":
        return Normalize(self.mean, self.std, device)


class Normalize:
    """uint8 or [0, 1] float batches → normalised float32, on the batch's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------------------- subsetting
def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` sorted indices with every class kept in proportion (largest remainders), drawn with ``seed``."""
    n = len(labels)
    if size < 0:
        raise RtlabError(f"subset size must be positive, got {size}")
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if (labels < 0).any():
        return np.sort(rng.permutation(n)[:size])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


# ------------------------------------------------------------------------------------------------------ columns
def detect_columns(features: Mapping[str, Any], opts: DataOptions, what: str) -> tuple[str, str | None]:
    """(image column, label column or None) from the features (``Image``/arrays, ``ClassLabel``) or names."""
    import datasets

    cols = list(features)
    if opts.image_column:
        if opts.image_column not in cols:
            raise RtlabError(f"{what} has no column '{opts.image_column}' (columns: {', '.join(cols)}); "
                             "fix data.image_column")
        image = opts.image_column
    else:
        array_types = tuple(getattr(datasets, n) for n in ("Array2D", "Array3D") if hasattr(datasets, n))
        image = next((c for c in cols if isinstance(features[c], datasets.Image)), None)
        image = image or next((c for c in cols if isinstance(features[c], array_types)), None)
        image = image or next((c for c in IMAGE_COLUMNS if c in cols), None)
        if image is None:
            raise RtlabError(f"{what} has no image column (columns: {', '.join(cols)}); "
                             "set data.image_column=NAME")
    if opts.label_column:
        if opts.label_column not in cols:
            raise RtlabError(f"{what} has no column '{opts.label_column}' (columns: {', '.join(cols)}); "
                             "fix data.label_column")
        return image, opts.label_column
    label = next((c for c in cols if isinstance(features[c], datasets.ClassLabel)), None)
    label = label or next((c for c in LABEL_COLUMNS if c in cols and c != image), None)
    return image, label


def class_names(features: Mapping[str, Any], label: str | None, values: np.ndarray) -> tuple[list[str], dict]:
    """Class names and a value → index map (ClassLabel names, else the sorted distinct values)."""
    import datasets

    if label is None:
        return [], {}
    feat = features[label]
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names), {}
    distinct = sorted(set(values.tolist()))
    if all(isinstance(v, (int, np.integer)) for v in distinct) and distinct == list(range(len(distinct))):
        return [str(v) for v in distinct], {}
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}


def _labels_of(ds: Any, label: str | None) -> np.ndarray:
    if label is None:
        return np.full(len(ds), -1, dtype=np.int64)
    return np.asarray(ds.with_format(None)[label])


# ----------------------------------------------------------------------------------------------------- decoding
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


def decode_images(ds: Any, column: str, opts: DataOptions, what: str, chunk: int = 2048,
                  skipped: list[tuple[int, str]] | None = None) -> torch.Tensor:
    """Every image of ``ds[column]`` as one uint8 (N, C, H, W) tensor (one pass, no per-step decoding); unreadable
    files are refused by name or, with ``data.skip_bad_images``, left out and listed in ``skipped``."""
    import datasets

    feat = ds.features[column]
    n = len(ds)
    if n == 0:
        raise RtlabError(f"{what} is empty; check data.train_size/data.test_size and the split names")
    parts: list[torch.Tensor] = []
    all_gray = True
    size: tuple[int, int] | None = None
    is_image = isinstance(feat, datasets.Image)
    view = ds.select_columns([column])
    view = view.with_format(None) if is_image else view.with_format("numpy")
    for start in range(0, n, chunk):
        if is_image:
            batch = image_rows(view, ds, column, start, min(start + chunk, n), what,
                               getattr(opts, "skip_bad_images", False), skipped)
            imgs = []
            for im in batch:
                gray = im.mode in ("L", "1", "I", "I;16", "F", "LA")
                all_gray &= gray
                arr = np.asarray(im.convert("RGB"))
                t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
                if opts.image_size:
                    t = resize_center_crop(t, opts.image_size)
                elif size is None:
                    size = tuple(t.shape[-2:])  # type: ignore[assignment]
                elif tuple(t.shape[-2:]) != size:
                    raise RtlabError(f"{what} has images of different sizes ({size[0]}x{size[1]} and "
                                     f"{t.shape[-2]}x{t.shape[-1]}); set data.image_size=N to resize them")
                imgs.append(t)
            parts += [torch.stack(imgs)] if imgs else []
        else:
            t = _array_batch(view[start:start + chunk][column])
            all_gray &= t.shape[1] == 1
            if opts.image_size:
                t = resize_center_crop(t, opts.image_size)
            parts.append(t)
    if not parts:
        raise RtlabError(f"{what}: no image could be decoded; check the files")
    images = torch.cat(parts)
    if is_image and all_gray:
        images = images[:, :1].contiguous()
    if images.shape[1] == 4:
        images = images[:, :3].contiguous()
    if opts.channels:
        if opts.channels not in (1, 3):
            raise RtlabError(f"data.channels must be 1 or 3, got {opts.channels}")
        images = _to_channels(images, opts.channels)
    return images


# -------------------------------------------------------------------------------------------------------- cache
def _cache_key(fingerprint: str, image: str, label: str | None, opts: DataOptions) -> str:
    skip = ["skip_bad_images"] if getattr(opts, "skip_bad_images", False) else []
    text = json.dumps([CACHE_VERSION, fingerprint, image, label, opts.image_size, opts.channels, *skip])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load_split(ds: Any, image: str, label: str | None, label_map: dict, opts: DataOptions, what: str
                ) -> ImageSplit:
    from framework.checkpoint import load_tensors, save_tensors

    fingerprint = getattr(ds, "_fingerprint", "") or ""
    path = cache_dir() / "tensors" / f"{_cache_key(fingerprint, image, label, opts)}.safetensors"
    if opts.cache and fingerprint and path.exists():
        try:
            tensors, meta = load_tensors(path)
            return ImageSplit(tensors["images"], tensors["labels"], list(meta.get("skipped", [])))
        except RtlabError as exc:
            log.warning("ignoring a broken data cache entry: %s", exc)
    values = _labels_of(ds, label)
    if label_map:
        values = np.array([label_map[v] for v in values.tolist()], dtype=np.int64)
    labels = torch.as_tensor(values.astype(np.int64))
    skipped: list[tuple[int, str]] = []
    images = decode_images(ds, image, opts, what, skipped=skipped)
    if skipped:
        labels = drop_rows(labels, skipped, what)
    split = ImageSplit(images, labels, [file for _, file in skipped])
    if opts.cache and fingerprint:
        try:
            save_tensors(path, {"images": images, "labels": labels}, {"what": what, "skipped": split.skipped})
        except OSError as exc:  # a read-only cache must not stop a run
            log.warning("could not write the data cache %s: %s", path, exc)
    return split


# --------------------------------------------------------------------------------------------------------- load
def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    c = images.shape[1]
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


def _pick_split(splits: Mapping[str, Any], wanted: str, what: str, fallbacks: Sequence[str] = ()) -> str | None:
    if wanted in splits:
        return wanted
    for alt in fallbacks:
        if alt in splits:
            return alt
    return None


def load_image_data(registry: Registry, options: Any) -> ImageData:
    """The selected dataset, decoded, subset and normalised as the ``data`` config says."""
    opts: DataOptions = registry.options("dataset", options)
    source = registry.build("dataset", opts)
    name = getattr(opts, "name", "data")
    splits = source.load()
    if not splits:
        raise RtlabError(f"dataset '{name}' has no splits")
    train_name = _pick_split(splits, opts.train_split, name)
    if train_name is None:
        raise RtlabError(f"dataset '{name}' has no split '{opts.train_split}' (splits: {', '.join(splits)}); "
                         "set data.train_split")
    train_ds = splits[train_name]
    test_name = _pick_split(splits, opts.test_split, name,
                            () if opts.test_split != "test" else ("validation", "valid", "val"))
    image, label = detect_columns(train_ds.features, opts, f"dataset '{name}'")
    if test_name is None:
        if opts.test_split != "test":
            raise RtlabError(f"dataset '{name}' has no split '{opts.test_split}' (splits: {', '.join(splits)}); "
                             "set data.test_split, or leave it at 'test' to hold out data.test_fraction")
        if not 0.0 < opts.test_fraction < 1.0:
            raise RtlabError(f"data.test_fraction must be in (0, 1), got {opts.test_fraction}")
        labels = _labels_of(train_ds, label)
        held = stratified_subset(labels, int(round(len(labels) * opts.test_fraction)), opts.seed + 7919)
        rest = np.setdiff1d(np.arange(len(labels)), held)
        log.info("dataset '%s' has no test split: holding out %d of %d train images (data.test_fraction=%s)",
                 name, len(held), len(labels), opts.test_fraction)
        test_ds, train_ds = train_ds.select(held), train_ds.select(rest)
    else:
        test_ds = splits[test_name]
    all_train_labels = _labels_of(train_ds, label)
    classes, label_map = class_names(train_ds.features, label, all_train_labels)
    for size, key in ((opts.train_size, "train_size"), (opts.test_size, "test_size")):
        if size is not None and size <= 0:
            raise RtlabError(f"data.{key} must be a positive number of images, got {size}")
    if opts.train_size is not None:
        train_ds = train_ds.select(stratified_subset(all_train_labels, opts.train_size, opts.seed))
    if opts.test_size is not None:
        test_ds = test_ds.select(stratified_subset(_labels_of(test_ds, label), opts.test_size, opts.seed + 1))
    train = _load_split(train_ds, image, label, label_map, opts, f"dataset '{name}' ({train_name} split)")
    test = _load_split(test_ds, image, label, label_map, opts, f"dataset '{name}' (test split)")
    if test.images.shape[1:] != train.images.shape[1:]:
        raise RtlabError(f"dataset '{name}': test images are {tuple(test.images.shape[1:])}, train images "
                         f"{tuple(train.images.shape[1:])}; set data.image_size and data.channels")
    if opts.mean is not None and opts.std is not None:
        mean, std = tuple(opts.mean), tuple(opts.std)
    else:
        mean, std = getattr(source, "mean", None), getattr(source, "std", None)
        if mean is None or std is None or len(mean) != train.images.shape[1]:
            mean, std = channel_stats(train.images)
    if len(mean) != train.images.shape[1] or len(std) != train.images.shape[1]:
        raise RtlabError(f"data.mean/data.std have {len(mean)} values for {train.images.shape[1]}-channel images")
    if not classes and label is not None:
        classes = [str(i) for i in range(int(train.labels.max()) + 1)]
    fingerprint = getattr(train_ds, "_fingerprint", "") or ""
    return ImageData(name, train, test, classes, tuple(mean), tuple(std), fingerprint)
