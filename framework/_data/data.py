"""The data path: any Hugging Face image dataset, decoded once to uint8 tensors, kept where it fits.

A dataset source component returns ``datasets`` splits (hub id, local imagefolder, parquet/arrow, a
``save_to_disk`` folder or a built-in). This module finds the image and label columns, takes the stratified
subset, decodes every image once into a ``(N, C, H, W)`` uint8 array with int64 labels, caches that on disk
(:mod:`framework._data.datacache`: keyed without rescanning the dataset, decoded in resumable chunks) and places it as
``data.storage`` says (:mod:`framework._data.storage`: on the device, in host memory or read from the cache file).
Batches are normalised on the device. No PIL in the training loop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from framework._data import datacache
from framework._data import streaming
from framework._data.bad_images import image_rows
from framework._base.files import cache_dir
from framework._data.datacache import DiskImages
from framework._data.decoding import (_array_batch, channel_stats, check_size, finish_channels, image_tensor,  # noqa: F401
                                resize_center_crop)
from framework._base.errors import RtlabError
from framework._base.options import DataOptions
from framework._base.registry import Registry
from framework._data.selection import (IMAGE_COLUMNS, LABEL_COLUMNS, Selection, _labels_of, class_names,  # noqa: F401
                                 detect_columns, select_splits, stratified_subset)
from framework._data.storage import BatchReader, choose_storage, place_images

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
    buffer: int | None = None  # data.shuffle_buffer: each epoch's order (None: a full permutation)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device), skipped=self.skipped)

    def place(self, mode: str, device: torch.device) -> "ImageSplit":
        images, reader = place_images(self.images, mode, device)
        return ImageSplit(images, self.labels.to(device), mode, reader, self.skipped)

    def order(self, gen: torch.Generator) -> torch.Tensor:
        """An epoch's order of the rows, drawn from ``gen`` (a shuffle buffer's with ``data.shuffle_buffer``)."""
        if self.buffer is None:
            return torch.randperm(len(self), generator=gen)
        return streaming.buffered_order(len(self), self.buffer, gen)

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
        """Both splits kept as ``storage`` (``auto``: chosen by size, see :mod:`framework._data.storage`) says."""
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
def decode_chunks(ds: Any, column: str, opts: DataOptions, what: str, chunk: int = 2048, start: int = 0
                  ) -> Iterator[tuple[torch.Tensor, bool]]:
    """``(uint8 (n, C, H, W) chunk, all its images gray)`` for rows ``start``, ``start + chunk``, … of
    ``ds[column]`` (image files as RGB, arrays as they are); :func:`finish_channels` is the whole-split step."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

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
                t, gray = image_tensor(im, opts.image_size)
                all_gray &= gray
                size = check_size(t, size, what)
                imgs.append(t)
            yield (torch.stack(imgs) if imgs else None), all_gray, rows, skipped
        else:
            t = _array_batch(batch)
            if opts.image_size:
                t = resize_center_crop(t, opts.image_size)
            yield t, False, rows, skipped


def decode_images(ds: Any, column: str, opts: DataOptions, what: str, chunk: int = 2048) -> torch.Tensor:
    """Every image of ``ds[column]`` as one uint8 (N, C, H, W) tensor (one pass, no per-step decoding)."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    chunks = [(t, gray) for t, gray, _, _ in decode_chunks(ds, column, opts, what, chunk) if t is not None]
    if not chunks:
        raise RtlabError(f"{what}: no image could be decoded; check the files")
    parts, grays = zip(*chunks)
    return finish_channels(torch.cat(parts), isinstance(ds.features[column], datasets.Image), all(grays),
                           opts.channels)


# --------------------------------------------------------------------------------------------------------- load
def split_labels(ds: Any, sel: Selection) -> torch.Tensor:
    """A selected split's labels as class indices (int64; -1 where unlabelled)."""
    values = _labels_of(ds, sel.label)
    if sel.label_map:
        values = np.array([sel.label_map[v] for v in values.tolist()], dtype=np.int64)
    return torch.as_tensor(values.astype(np.int64))


def classes_of(sel: Selection, train_labels: torch.Tensor) -> list[str]:
    """Class names: the selection's, else the label values up to the largest (none without labels)."""
    if sel.classes or sel.label is None:
        return list(sel.classes)
    return [str(i) for i in range(int(train_labels.max()) + 1)]


def normalisation(opts: DataOptions, source: Any, channels: int,
                  computed: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): ``data.mean``/``data.std``, else the source's when they fit the channels, else ``computed()``
    (the train split's statistics)."""
    if opts.mean is not None and opts.std is not None:
        mean, std = opts.mean, opts.std
    else:
        mean, std = getattr(source, "mean", None), getattr(source, "std", None)
        if mean is None or std is None or len(mean) != channels:
            mean, std = computed()
    if len(mean) != channels or len(std) != channels:
        raise RtlabError(f"data.mean/data.std have {len(mean)} values for {channels}-channel images")
    return tuple(mean), tuple(std)


def build_entry(sel: Selection, opts: DataOptions, name: str, folder: Path) -> dict[str, Any]:
    """Decode both splits into the cache entry ``folder`` (resumably, see :mod:`framework._data.datacache`)."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    partial = folder.with_name(folder.name + ".partial")
    shapes, labels, skipped = {}, {}, {}
    for split, ds, what in (("train", sel.train, f"dataset '{name}' ({sel.train_name} split)"),
                            ("test", sel.test, f"dataset '{name}' (test split)")):
        labels[split] = split_labels(ds, sel)
        is_image = isinstance(ds.features[sel.image], datasets.Image)
        shapes[split], skipped[split] = datacache.write_split(
            partial, split, len(ds), lambda start, ds=ds, what=what: decode_chunks(
                ds, sel.image, opts, what, datacache.DECODE_CHUNK, start=start),
            lambda x, gray, is_image=is_image: finish_channels(x, is_image, gray, opts.channels), labels[split],
            what)
    if shapes["test"][1:] != shapes["train"][1:]:
        raise RtlabError(f"dataset '{name}': test images are {shapes['test'][1:]}, train images "
                         f"{shapes['train'][1:]}; set data.image_size and data.channels")
    train = DiskImages(partial / "train.images", shapes["train"])
    mean, std = channel_stats(train)
    meta = {"name": name, "classes": classes_of(sel, labels["train"]), "mean": mean, "std": std,
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
    mean, std = normalisation(opts, source, channels, lambda: (meta["mean"], meta["std"]))
    return ImageData(meta["name"], splits["train"], splits["test"], list(meta["classes"]), mean, std,
                     meta.get("fingerprint", ""))


def _decode_options(opts: DataOptions, source: Any) -> dict[str, Any]:
    """Every option that changes the decoded tensors (not where they live, nor the normalisation)."""
    d = dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else dict(opts)
    for k in ("storage", "cache", "mean", "std", "shuffle_buffer", "workers"):
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
    storage = getattr(opts, "storage", "auto")
    cheap = getattr(source, "cache_key", None)
    key = cheap() if opts.cache and callable(cheap) else None
    folder = cache_dir() / "data" / datacache.entry_key(key, _decode_options(opts, source)) if key else None
    meta = datacache.load_entry(folder) if folder else None
    if storage == "auto" and meta is None:
        storage = streaming.stream_if_too_big(source, opts, name)  # not cached yet: would its decode fit the disk?
    if storage == "stream":
        return load_stream_data(source, opts, name, torch.device(device or "cpu"), key)
    sel = None
    if opts.cache and key is None:
        sel = select_splits(source, opts, name)
        prints = [getattr(ds, "_fingerprint", "") or "" for ds in (sel.train, sel.test)]
        key = "fingerprint:" + ":".join(prints) if all(prints) else None
        folder = cache_dir() / "data" / datacache.entry_key(key, _decode_options(opts, source)) if key else None
        meta = datacache.load_entry(folder) if folder else None
    data = None
    if folder is not None:
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
    data = data.place(storage, torch.device(device or "cpu"))
    data.train.buffer = getattr(opts, "shuffle_buffer", None)
    return data


class _Loaded:
    """A source whose splits are already loaded (the label columns of a stream, for :func:`select_splits`)."""

    def __init__(self, splits: dict[str, Any]) -> None:
        self.splits = splits

    def load(self) -> dict[str, Any]:
        return self.splits


def load_stream_data(source: Any, opts: DataOptions, name: str, device: torch.device,
                     key: str | None = None) -> ImageData:
    """The selected dataset read from its parquet shards while training (``data.storage=stream``,
    :mod:`framework._data.streaming`): splits and subsets chosen on the label columns, nothing decoded up front.
    ``key`` (the source's cheap identity) keys the channel statistics it computes."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    files_of = getattr(source, "stream_files", None)
    if not callable(files_of):
        raise RtlabError(f"dataset '{name}' cannot stream: data.storage=stream reads parquet files (data=hf "
                         "data.path=a hub id or local parquet files); use data.storage=disk")
    if opts.skip_bad_images:
        raise RtlabError("data.skip_bad_images needs the decoded cache (a stream cannot leave images out); use "
                         "data.storage=disk with it")
    files = files_of()
    rows = streaming.ParquetRows([f for split in files.values() for f in split])
    features = datasets.Features.from_arrow_schema(rows.schema())
    image, label = detect_columns(features, opts, f"dataset '{name}'")
    if not isinstance(features[image], datasets.Image):
        raise RtlabError(f"data.storage=stream decodes Image columns; column '{image}' of dataset '{name}' is "
                         f"{type(features[image]).__name__}: use data.storage=disk")
    values = rows.column(label) if label else None
    splits, lo, counts = {}, 0, iter(rows.file_rows)
    for split, paths in files.items():
        hi = lo + sum(next(counts) for _ in paths)
        cols = {"__row__": np.arange(lo, hi), image: np.zeros(hi - lo, dtype=np.int8)}
        feats = {"__row__": datasets.Value("int64"), image: datasets.Value("int8")}
        if label:
            cols[label], feats[label] = values[lo:hi], features[label]
        splits[split], lo = datasets.Dataset.from_dict(cols, features=datasets.Features(feats)), hi
    chosen = dataclasses.replace(opts, image_column=image, label_column=label)
    sel = select_splits(_Loaded(splits), chosen, name)
    finish = functools.partial(finish_channels, is_image=True, channels=opts.channels)  # picklable: workers may be spawned
    out: dict[str, ImageSplit] = {}
    shape: tuple[int, ...] | None = None
    for split, ds in (("train", sel.train), ("test", sel.test)):
        what = f"dataset '{name}' ({sel.train_name if split == 'train' else 'test'} split)"
        ids = np.asarray(ds.with_format("numpy")["__row__"], dtype=np.int64)
        if shape is None:  # channels and size from the first train images, as the decode would find them
            probe = streaming.StreamImages(rows, image, ids, (0, 3, 0, 0), finish, opts.image_size, False, what)
            sample, gray = probe.decode(np.arange(min(len(ids), 256)))
            shape = tuple(finish(sample[:1], all_gray=gray).shape[1:])
        images = streaming.StreamImages(rows, image, ids, (len(ids), *shape), finish, opts.image_size,
                                        shape[0] == 1 and gray, what)
        out[split] = ImageSplit(images, split_labels(ds, sel).to(device), "stream")
    train = out["train"]
    mean, std = normalisation(opts, source, shape[0], lambda: streaming.stream_stats(
        train.images, key and datacache.entry_key(key, _decode_options(opts, source))))
    buffer = opts.shuffle_buffer or streaming.default_buffer(int(np.prod(shape)))
    workers = opts.workers if opts.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda"
                                                             else 1)
    train.buffer, train.reader = buffer, streaming.StreamReader(train.images, device, buffer, workers)
    log.info("dataset '%s': data.storage=stream: %d train / %d test images from %d parquet files, shuffle buffer "
             "%d rows (%d-row shards), %d decoding workers", name, len(train), len(out["test"]),
             len(rows.files), buffer, streaming.shard_rows(buffer), workers)
    return ImageData(name, train, out["test"], classes_of(sel, train.labels.cpu()), mean, std,
                     extra={"storage": "stream"})
