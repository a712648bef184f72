"""The data path: any Hugging Face image dataset, decoded once to uint8 tensors, kept where it fits.

A dataset source component returns ``datasets`` splits (hub id, local imagefolder, parquet/arrow, a
``save_to_disk`` folder or a built-in). This module finds the image and label columns, takes the stratified
subset, decodes every image once into a ``(N, C, H, W)`` uint8 array with int64 labels, caches that on disk
(:mod:`framework.datacache`: keyed without rescanning the dataset, decoded in resumable chunks) and places it as
``data.storage`` says (:mod:`framework.storage`: on the device, in host memory or read from the cache file).
Batches are normalised on the device. No PIL in the training loop.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from framework import datacache
from framework.bad_images import image_rows
from framework.datacache import DiskImages, cache_dir  # noqa: F401  (cache_dir: public since the first cache)
from framework.errors import RtlabError
from framework.options import DataOptions
from framework.registry import Registry
from framework.selection import (IMAGE_COLUMNS, LABEL_COLUMNS, Selection, _labels_of, class_names,  # noqa: F401
                                 detect_columns, select_splits, stratified_subset)
from framework.storage import BatchReader, choose_storage, place_images

log = logging.getLogger(__name__)


@dataclass
class ImageSplit:
    """Decoded images (uint8, N x C x H x W: a tensor, or :class:`DiskImages` for ``data.storage=disk``) and
    labels (int64, -1 where unlabelled). ``batch(index)`` delivers images on the training device."""

    images: Any
    labels: torch.Tensor
    storage: str = "device"
    reader: BatchReader | None = field(default=None, repr=False)
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (data.skip_bad_images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device), skipped=self.skipped)

    def place(self, mode: str, device: torch.device) -> "ImageSplit":
        images, reader = place_images(self.images, mode, device)
        return ImageSplit(images, self.labels.to(device), mode, reader, self.skipped)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images ``index`` (train-split positions) on the training device."""
        return self.images[index] if self.reader is None else self.reader.batch(index)

    def ahead(self, order: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The index batches of ``order``; host and disk storage gather each one's images while the previous
        one trains."""
        return iter(order) if self.reader is None else self.reader.ahead(order)

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

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(s.images.shape)) for s in (self.train, self.test))

    def to(self, device: torch.device | str) -> "ImageData":
        return dataclasses.replace(self, train=self.train.to(device), test=self.test.to(device))

    def place(self, storage: str, device: torch.device) -> "ImageData":
        """Both splits kept as ``storage`` (``auto``: chosen by size, see :mod:`framework.storage`) says."""
        mode = choose_storage(storage, self.nbytes, device, f"dataset '{self.name}'")
        return dataclasses.replace(self, train=self.train.place(mode, device), test=self.test.place(mode, device),
                                   extra={**self.extra, "storage": mode})

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


def decode_chunks(ds: Any, column: str, opts: DataOptions, what: str, chunk: int = 2048, start: int = 0
                  ) -> Iterator[tuple[torch.Tensor, bool]]:
    """``(uint8 (n, C, H, W) chunk, all its images gray)`` for rows ``start``, ``start + chunk``, … of
    ``ds[column]`` (image files as RGB, arrays as they are); :func:`finish_channels` is the whole-split step."""
    import datasets

    feat = ds.features[column]
    n = len(ds)
    if n == 0:
        raise RtlabError(f"{what} is empty; check data.train_size/data.test_size and the split names")
    size: tuple[int, int] | None = None
    is_image = isinstance(feat, datasets.Image)
    view = ds.select_columns([column])
    view = view.with_format(None) if is_image else view.with_format("numpy")
    for start in range(start, n, chunk):
        rows = min(chunk, n - start)
        skipped: list[tuple[int, str]] = []
        if is_image:  # an unreadable file is refused by name, or left out with data.skip_bad_images
            batch = image_rows(view, ds, column, start, start + rows, what, opts.skip_bad_images, skipped)
        else:
            batch = view[start:start + rows][column]
        if is_image:
            imgs = []
            all_gray = True
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
            yield (torch.stack(imgs) if imgs else None), all_gray, rows, skipped
        else:
            t = _array_batch(batch)
            if opts.image_size:
                t = resize_center_crop(t, opts.image_size)
            yield t, False, rows, skipped


def finish_channels(images: torch.Tensor, is_image: bool, all_gray: bool, opts: DataOptions) -> torch.Tensor:
    """The whole-split channel step: all-gray image files keep one channel, alpha goes, then ``data.channels``."""
    if is_image and all_gray:
        images = images[:, :1].contiguous()
    if images.shape[1] == 4:
        images = images[:, :3].contiguous()
    if opts.channels:
        if opts.channels not in (1, 3):
            raise RtlabError(f"data.channels must be 1 or 3, got {opts.channels}")
        images = _to_channels(images, opts.channels)
    return images


def decode_images(ds: Any, column: str, opts: DataOptions, what: str, chunk: int = 2048) -> torch.Tensor:
    """Every image of ``ds[column]`` as one uint8 (N, C, H, W) tensor (one pass, no per-step decoding)."""
    import datasets

    chunks = [(t, gray) for t, gray, _, _ in decode_chunks(ds, column, opts, what, chunk) if t is not None]
    if not chunks:
        raise RtlabError(f"{what}: no image could be decoded; check the files")
    parts, grays = zip(*chunks)
    return finish_channels(torch.cat(parts), isinstance(ds.features[column], datasets.Image), all(grays), opts)


# --------------------------------------------------------------------------------------------------------- load
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


def build_entry(sel: Selection, opts: DataOptions, name: str, folder: Path) -> dict[str, Any]:
    """Decode both splits into the cache entry ``folder`` (resumably, see :mod:`framework.datacache`)."""
    import datasets

    partial = folder.with_name(folder.name + ".partial")
    shapes, labels, skipped = {}, {}, {}
    for split, ds, what in (("train", sel.train, f"dataset '{name}' ({sel.train_name} split)"),
                            ("test", sel.test, f"dataset '{name}' (test split)")):
        values = _labels_of(ds, sel.label)
        if sel.label_map:
            values = np.array([sel.label_map[v] for v in values.tolist()], dtype=np.int64)
        labels[split] = torch.as_tensor(values.astype(np.int64))
        is_image = isinstance(ds.features[sel.image], datasets.Image)
        shapes[split], skipped[split] = datacache.write_split(
            partial, split, len(ds), lambda start, ds=ds, what=what: decode_chunks(
                ds, sel.image, opts, what, datacache.DECODE_CHUNK, start=start),
            lambda x, gray, is_image=is_image: finish_channels(x, is_image, gray, opts), labels[split], what)
    if shapes["test"][1:] != shapes["train"][1:]:
        raise RtlabError(f"dataset '{name}': test images are {shapes['test'][1:]}, train images "
                         f"{shapes['train'][1:]}; set data.image_size and data.channels")
    train = DiskImages(partial / "train.images", shapes["train"])
    mean, std = channel_stats(train)
    classes = sel.classes
    if not classes and sel.label is not None:
        classes = [str(i) for i in range(int(labels["train"].max()) + 1)]
    meta = {"name": name, "classes": classes, "mean": mean, "std": std,
            "fingerprint": getattr(sel.train, "_fingerprint", "") or "",
            "splits": {s: {"shape": list(shapes[s]), "skipped": skipped[s]} for s in shapes}}
    datacache.commit_entry(partial, folder, meta)
    return meta


def open_entry(folder: Path, meta: dict[str, Any], opts: DataOptions, source: Any) -> ImageData:
    """The cache entry as :class:`ImageData` read from its files, with the normalisation ``data`` asks for."""
    splits = {s: ImageSplit(DiskImages(folder / f"{s}.images", m["shape"]),
                            datacache.read_labels(folder / f"{s}.labels", m["shape"][0]),
                            skipped=list(m.get("skipped", [])))
              for s, m in meta["splits"].items()}
    channels = int(meta["splits"]["train"]["shape"][1])
    if opts.mean is not None and opts.std is not None:
        mean, std = tuple(opts.mean), tuple(opts.std)
    else:
        mean, std = getattr(source, "mean", None), getattr(source, "std", None)
        if mean is None or std is None or len(mean) != channels:
            mean, std = meta["mean"], meta["std"]
    if len(mean) != channels or len(std) != channels:
        raise RtlabError(f"data.mean/data.std have {len(mean)} values for {channels}-channel images")
    return ImageData(meta["name"], splits["train"], splits["test"], list(meta["classes"]), tuple(mean),
                     tuple(std), meta.get("fingerprint", ""))


def _decode_options(opts: DataOptions, source: Any) -> dict[str, Any]:
    """Every option that changes the decoded tensors (not where they live, nor the normalisation)."""
    d = dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else dict(opts)
    for k in ("storage", "cache", "mean", "std"):
        d.pop(k, None)
    return {"source": f"{type(source).__module__}.{type(source).__qualname__}", **d}


def load_image_data(registry: Registry, options: Any, device: torch.device | str | None = None) -> ImageData:
    """The selected dataset, decoded, subset and normalised as the ``data`` config says, kept as
    ``data.storage`` says for training on ``device`` (default: the CPU).

    A source's ``cache_key()`` (a cheap identity of its data: a file listing, a hub revision) finds a cached
    entry without loading the dataset; without one, the ``datasets`` fingerprint of the selection keys it."""
    opts: DataOptions = registry.options("dataset", options)
    source = registry.build("dataset", opts)
    name = getattr(opts, "name", "data")
    cheap = getattr(source, "cache_key", None)
    key = cheap() if opts.cache and callable(cheap) else None
    sel = None
    if opts.cache and key is None:
        sel = select_splits(source, opts, name)
        prints = [getattr(ds, "_fingerprint", "") or "" for ds in (sel.train, sel.test)]
        key = "fingerprint:" + ":".join(prints) if all(prints) else None
    data = None
    if key is not None:
        folder = cache_dir() / "data" / datacache.entry_key(key, _decode_options(opts, source))
        meta = datacache.load_entry(folder)
        try:
            if meta is None:
                with datacache.entry_lock(folder):  # concurrent runs and ranks decode once
                    meta = datacache.load_entry(folder) or build_entry(
                        sel or select_splits(source, opts, name), opts, name, folder)
            data = open_entry(folder, meta, opts, source)
        except OSError as exc:  # a read-only or full cache must not stop a run
            log.warning("could not use the data cache %s (%s); decoding into a temporary folder", folder, exc)
    if data is None:  # data.cache=false: a temporary entry, removed once its files are open
        tmp = Path(tempfile.mkdtemp(prefix="rtlab-decode-"))
        try:
            meta = build_entry(sel or select_splits(source, opts, name), opts, name, tmp / "entry")
            data = open_entry(tmp / "entry", meta, opts, source)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return data.place(getattr(opts, "storage", "auto"), torch.device(device or "cpu"))
