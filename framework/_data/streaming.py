"""``data.storage=stream``: train on parquet shards without decoding the dataset first.

For data whose decoded size exceeds the disk (a hub dataset of millions of images, a folder of ImageNet parquet
files), nothing is decoded up front: the encoded images stay in their parquet files (local, or ``hf://`` URLs of a
hub dataset when online) and are decoded batch by batch by DataLoader worker processes.

* **Rows.** The selection (splits, hold-out, ``data.train_size`` subsets) is made from the label columns alone, as
  for every other storage; row ``i`` of a split is the same image in every mode, so ``index`` (what the teacher
  cache and the probes key on) means the same thing.
* **Order.** Random access into compressed shards is slow, so the order is a *shuffle buffer*
  (:func:`buffered_order`): the split is cut into shards of consecutive rows, the shards are visited in a random
  order, and a buffer of ``data.shuffle_buffer`` rows emits a random row for each row read. The order is a pure
  function of the data-order generator (``train.seed``) and the row count, so ``device``, ``host`` and ``disk``
  storage with the same ``data.shuffle_buffer`` train in exactly the same order (and identically).
* **Reading.** :class:`StreamReader` turns an epoch's batches into shard reads in the order they are first needed;
  workers decode only the rows this rank needs; decoded rows wait until their batch comes. The rows waiting are
  bounded by the buffer (plus the shards in flight): memory holds ``data.shuffle_buffer`` decoded rows, whatever the
  dataset's size. The order is saved with the training state, so a resumed run reads from the first shard that
  still holds a row of its remaining batches — that position is the shard cursor.
* Probes and statistics read a split in row order (:class:`StreamImages`), shard by shard.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from framework._base.errors import RtlabError
from framework._base.files import atomic_write_json, cache_dir
from framework._data.datacache import RowArray
from framework._data.decoding import channel_stats, check_size, image_tensor
from framework._data.selection import detect_columns
from framework._data.storage import env_bytes
from framework._nets import distributed

log = logging.getLogger(__name__)

SHARD_ROWS = 1024  # rows per shard at most (a shard is read and decoded as one task)
BUFFER_BYTES = 512 << 20  # data.shuffle_buffer=null in stream mode: this many bytes of decoded rows, …
BUFFER_ROWS = (1024, 16384)  # … within these row counts
STATS_ROWS = 50_000  # channel statistics from every row up to this many, else from evenly spaced shards


def shard_rows(buffer: int) -> int:
    """Rows per shard for a shuffle buffer of ``buffer`` rows (the buffer holds at least four shards)."""
    return max(1, min(SHARD_ROWS, buffer // 4))


def default_buffer(row_bytes: int) -> int:
    return int(np.clip(BUFFER_BYTES // max(1, row_bytes), *BUFFER_ROWS))


def buffered_order(n: int, buffer: int, gen: torch.Generator) -> torch.Tensor:
    """A permutation of ``range(n)`` as a shuffle buffer of ``buffer`` rows makes it from shards read in a random
    order; the row emitted at position ``o`` was read at position ``o + buffer`` or before."""
    if buffer < 1:
        raise RtlabError(f"data.shuffle_buffer must be a positive number of rows, got {buffer}")
    size = shard_rows(buffer)
    shards = torch.randperm(-(-n // size), generator=gen).numpy()
    draws = torch.rand(n, generator=gen, dtype=torch.float64).numpy()
    out, buf = np.empty(n, dtype=np.int64), np.empty(min(buffer, n), dtype=np.int64)
    fill = used = emitted = 0
    for shard in shards.tolist():
        for row in range(shard * size, min(n, (shard + 1) * size)):
            if fill < len(buf):
                buf[fill], fill = row, fill + 1
                continue
            j = int(draws[used] * fill)
            used += 1
            out[emitted], buf[j], emitted = buf[j], row, emitted + 1
    out[emitted:] = buf[:fill][np.argsort(draws[used:used + fill], kind="stable")]
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------------ parquet
def _open(path: str):
    import pyarrow.parquet as pq  # lazy: as datasets

    if "://" in path:  # hf://datasets/… (huggingface_hub registers the protocol with fsspec), s3://, …
        import fsspec  # lazy: as datasets

        return pq.ParquetFile(fsspec.open(path, "rb").open())
    return pq.ParquetFile(path)


class ParquetRows:
    """The rows of some parquet files, numbered across them in order; reads one column's values by row number,
    a row group at a time (the last few kept, per process)."""

    def __init__(self, files: Sequence[str], keep: int = 2) -> None:
        self.files, self.keep = list(files), keep
        sizes, self.groups, self.file_rows = [], [], []
        for f, path in enumerate(self.files):
            meta = _open(path).metadata
            self.file_rows.append(int(meta.num_rows))
            for g in range(meta.num_row_groups):
                sizes.append(meta.row_group(g).num_rows)
                self.groups.append((f, g))
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._pid, self._handles, self._tables = None, {}, OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:  # worker processes open the files again
        return {**self.__dict__, "_pid": None, "_handles": {}, "_tables": OrderedDict()}

    def schema(self):
        return _open(self.files[0]).schema_arrow

    def column(self, name: str) -> np.ndarray:
        """Every row's value of a (small) column."""
        import pyarrow as pa  # lazy: as datasets

        return pa.concat_arrays([_open(p).read(columns=[name]).column(0).combine_chunks()
                                 for p in self.files]).to_numpy(zero_copy_only=False)

    def _group(self, g: int, column: str):
        if self._pid != os.getpid():
            self._pid, self._handles, self._tables = os.getpid(), {}, OrderedDict()
        if g not in self._tables:
            f, rg = self.groups[g]
            handle = self._handles.get(f) or self._handles.setdefault(f, _open(self.files[f]))
            self._tables[g] = handle.read_row_group(rg, columns=[column]).column(0)
            while len(self._tables) > self.keep:
                self._tables.popitem(last=False)
        self._tables.move_to_end(g)
        return self._tables[g]

    def values(self, rows: np.ndarray, column: str) -> list[Any]:
        """``column`` of ``rows`` (any order), each row group read once."""
        groups = np.searchsorted(self.starts, rows, side="right") - 1
        out: list[Any] = [None] * len(rows)
        for g in np.unique(groups).tolist():
            where = np.flatnonzero(groups == g)
            table = self._group(g, column)
            for i, value in zip(where.tolist(), table.take(rows[where] - self.starts[g]).to_pylist()):
                out[i] = value
        return out


def decode_value(value: Any, what: str, row: int) -> Any:
    """An HF ``Image`` value ({"bytes", "path"}) as a loaded PIL image, EXIF-rotated as ``datasets`` does."""

    try:
        if not isinstance(value, dict):
            raise ValueError(f"not an Image value: {type(value).__name__}")
        im = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        im.load()
    except Exception as exc:
        raise RtlabError(f"{what}: row {row} cannot be decoded ({type(exc).__name__}: {exc}); data.storage=stream "
                         "cannot leave images out: use data.storage=disk data.skip_bad_images=true") from None
    if im.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
        im = PIL.ImageOps.exif_transpose(im)
    return im


class StreamImages(RowArray):
    """The rows ``ids`` of ``source`` decoded on demand: uint8 (N, C, H, W), indexable like a tensor."""

    def __init__(self, source: ParquetRows, column: str, ids: np.ndarray, shape: Sequence[int],
                 finish: Callable[..., torch.Tensor], image_size: int | None, gray: bool, what: str,
                 start: int = 0, stop: int | None = None) -> None:
        self.source, self.column, self.ids = source, column, np.asarray(ids, dtype=np.int64)
        self.full = tuple(int(s) for s in shape)
        self.finish, self.image_size, self.gray, self.what = finish, image_size, gray, what
        self.start, self.stop = start, self.full[0] if stop is None else stop

    def view(self, start: int, stop: int) -> "StreamImages":
        return StreamImages(self.source, self.column, self.ids, self.full, self.finish, self.image_size, self.gray,
                            self.what, start, stop)

    def decode(self, rows: np.ndarray) -> tuple[torch.Tensor, bool]:
        """(uint8 3 x H x W images of absolute rows ``rows`` as decoded, before the channel step; all gray)."""

        size = tuple(self.full[2:]) if self.full[0] else None
        images, all_gray = [], True
        for row, value in zip(rows.tolist(), self.source.values(self.ids[rows], self.column)):
            t, gray = image_tensor(decode_value(value, self.what, row), self.image_size)
            size = check_size(t, size, self.what)
            images.append(t)
            all_gray &= gray
        return torch.stack(images), all_gray

    def read(self, index: Any, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = self._positions(index)
        x = torch.empty((rows.size, *self.full[1:]), dtype=torch.uint8) if out is None else out[:rows.size]
        if rows.size:
            images, all_gray = self.decode(rows)
            if self.gray and not all_gray:
                raise RtlabError(f"{self.what}: the first images were gray, so the split streams as 1 channel, but "
                                 f"some of rows {rows.min()}–{rows.max()} are in colour; set data.channels=3")
            x.copy_(self.finish(images, all_gray=self.gray))
        return x


# -------------------------------------------------------------------------------------------------- the reader
class _Shards(torch.utils.data.Dataset):
    """DataLoader items: (rows, their decoded images) for each task (the rows of one shard this rank needs)."""

    def __init__(self, images: StreamImages, tasks: list[np.ndarray]) -> None:
        self.images, self.tasks = images, tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tasks[i]
        return torch.from_numpy(rows), self.images.read(rows)


class StreamReader:
    """Delivers an epoch's batches of :class:`StreamImages` (the loop's ``ahead``/``batch`` protocol): shards are
    read in the order their rows are first needed, decoded by ``workers`` processes (0: in this one)."""

    def __init__(self, images: StreamImages, device: torch.device, buffer: int, workers: int) -> None:
        self.images, self.device, self.workers = images, device, workers
        self.size = shard_rows(buffer)
        self.ready: dict[tuple[int, int], torch.Tensor] = {}
        self.peak_held = 0  # the most decoded rows waiting for their batch so far (bounded by the buffer)

    @staticmethod
    def _key(index: torch.Tensor) -> tuple[int, int]:
        return index.data_ptr(), index.numel()

    def _tasks(self, wanted: np.ndarray) -> list[np.ndarray]:
        """The rows of ``wanted`` grouped by shard (sorted within one), shards in the order first needed."""
        rows = np.sort(wanted)
        shards = rows // self.size
        cuts = np.flatnonzero(np.diff(shards)) + 1
        groups = np.split(rows, cuts)
        _, first = np.unique(wanted // self.size, return_index=True)  # shard ids ascending, as the groups are
        return [groups[i] for i in np.argsort(first, kind="stable")]

    def ahead(self, order: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        batches = list(order)
        local = [distributed.shard(b) for b in batches]
        rows = [b.cpu().numpy() for b in local]
        if not rows:
            return
        tasks = self._tasks(np.concatenate(rows))
        loader = torch.utils.data.DataLoader(
            _Shards(self.images, tasks), batch_size=None, shuffle=False, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None)
        shards = iter(loader)
        # row -> its decoded image, copied out of its shard's block: a block would stay alive until its last row's
        # batch, and the last rows of a shard linger in a shuffle buffer for several buffers' worth of rows
        held: dict[int, torch.Tensor] = {}
        try:
            for batch, index, want in zip(batches, local, rows):
                while any(r not in held for r in want.tolist()):
                    got, block = next(shards)
                    held.update((r, block[i].clone()) for i, r in enumerate(got.tolist()))
                    self.peak_held = max(self.peak_held, len(held))
                images = torch.stack([held.pop(r) for r in want.tolist()])
                self.ready = {self._key(index): images.to(self.device, non_blocking=True)}
                yield batch
        finally:
            self.ready = {}
            del shards

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        images = self.ready.pop(self._key(index), None)
        return images if images is not None else self.images.read(index).to(self.device)


# -------------------------------------------------------------------------------------------------- statistics
def stream_stats(images: StreamImages, key: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the split: of every row up to :data:`STATS_ROWS`, else of evenly spaced shards
    (logged as an estimate); kept in ``$RTLAB_CACHE_DIR/stream/`` under ``key``."""
    path = cache_dir() / "stream" / f"{key}.json" if key else None
    if path is not None and path.exists():
        with open(path) as f:
            saved = json.load(f)
        return tuple(saved["mean"]), tuple(saved["std"])
    if len(images) <= STATS_ROWS:
        mean, std = channel_stats(images)
    else:
        starts = np.linspace(0, len(images) - SHARD_ROWS, STATS_ROWS // SHARD_ROWS).astype(np.int64)
        rows = np.concatenate([np.arange(s, s + SHARD_ROWS) for s in starts])
        mean, std = channel_stats(images.read(rows))
        log.info("%s: channel statistics estimated from %d evenly spaced rows (set data.mean/data.std to give "
                 "them)", images.what, len(rows))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"mean": mean, "std": std})
    return mean, std


def stream_files_of(path: str, config_name: str | None = None, revision: str | None = None
                    ) -> dict[str, list[str]]:
    """Split → parquet files of a local parquet file or folder (split names from the file names, as ``datasets``
    infers them), or of a hub dataset (its ``hf://`` data files; online)."""
    p = Path(path).expanduser()
    if p.is_file():
        files = {"train": [str(p)]}
    elif p.is_dir():
        from datasets.data_files import DataFilesDict, get_data_patterns  # lazy: as datasets

        try:
            files = {str(k): list(v) for k, v in DataFilesDict.from_patterns(get_data_patterns(str(p)),
                                                                             base_path=str(p)).items()}
        except Exception as exc:
            raise RtlabError(f"data.storage=stream found no data files in {p} ({exc})") from None
    else:
        import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

        builder = datasets.load_dataset_builder(path, config_name, revision=revision)
        files = {str(k): list(v) for k, v in (builder.config.data_files or {}).items()}
    bad = sorted({Path(f.split("::")[0]).suffix or f for v in files.values() for f in v} - {".parquet"})
    if not files or bad:
        raise RtlabError(f"data.storage=stream reads parquet files; {path} has {', '.join(bad) or 'none'}: use "
                         "data.storage=disk (decoded once into the cache, read from disk)")
    return files


def stream_if_too_big(source: Any, opts: Any, name: str) -> str:
    """``stream`` when the source can stream and its decoded images would exceed the disk budget
    (``$RTLAB_MAX_DISK_BYTES``, default half the free space of the cache folder), else ``auto``; logs why."""

    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    files_of = getattr(source, "stream_files", None)
    if not callable(files_of):
        return "auto"
    try:
        rows = ParquetRows([f for split in files_of().values() for f in split])
        image, _ = detect_columns(datasets.Features.from_arrow_schema(rows.schema()), opts, f"dataset '{name}'")
    except Exception:  # not parquet, no image column, a hub id that cannot be reached: the decode path says
        return "auto"  # what is wrong, in its own words
    n = len(rows) if opts.train_size is None else min(len(rows), opts.train_size + (opts.test_size or len(rows)))
    if opts.image_size:
        row = (opts.channels or 3) * opts.image_size ** 2
    else:
        t, _ = image_tensor(decode_value(rows.values(np.array([0]), image)[0], f"dataset '{name}'", 0), None)
        row = (opts.channels or 3) * t.shape[1] * t.shape[2]
    budget = env_bytes("RTLAB_MAX_DISK_BYTES")
    if budget is None:
        folder = cache_dir()
        while not folder.exists():
            folder = folder.parent
        budget = shutil.disk_usage(folder).free // 2
    if n * row <= budget:
        return "auto"
    gib = 1 << 30
    log.info("dataset '%s': data.storage=auto chose stream (about %.2f GiB decoded would exceed the disk budget of "
             "%.2f GiB; cap: RTLAB_MAX_DISK_BYTES)", name, n * row / gib, budget / gib)
    return "stream"
