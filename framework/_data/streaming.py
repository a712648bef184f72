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
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from framework._base.errors import RtlabError
from framework._base.files import atomic_write_json, cache_dir
from framework._data.datacache import RowArray
from framework._data.decoding import PixelError, channel_stats, check_size, image_tensor
from framework._data.parquet import (ParquetRows, check_parquet_files, empty_split, stream_files_of,  # noqa: F401
                                     unreadable_parquet)
from framework._data.selection import detect_columns, image_path
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


def decode_value(value: Any, what: str, row: int, base: Path | None = None) -> Any:
    """An HF ``Image`` value ({"bytes", "path"}), encoded bytes, or a file path (a column of paths, relative ones
    read from ``base``), as a loaded PIL image, EXIF-rotated as ``datasets`` does."""


    try:
        if isinstance(value, str) and value:
            value = {"bytes": None, "path": image_path(value, base)}
        elif isinstance(value, (bytes, bytearray)):
            value = {"bytes": bytes(value), "path": None}
        if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
            raise ValueError("an empty value, no image" if not value else f"not an image: {type(value).__name__}")
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
                 start: int = 0, stop: int | None = None, base: Path | None = None) -> None:
        self.source, self.column, self.ids = source, column, np.asarray(ids, dtype=np.int64)
        self.full = tuple(int(s) for s in shape)
        self.finish, self.image_size, self.gray, self.what = finish, image_size, gray, what
        self.start, self.stop = start, self.full[0] if stop is None else stop
        self.base = base  # the folder relative image paths are read from (a column of paths)

    def view(self, start: int, stop: int) -> "StreamImages":
        return StreamImages(self.source, self.column, self.ids, self.full, self.finish, self.image_size, self.gray,
                            self.what, start, stop, self.base)

    def decode(self, rows: np.ndarray) -> tuple[torch.Tensor, bool]:
        """(uint8 3 x H x W images of absolute rows ``rows`` as decoded, before the channel step; all gray)."""

        size = tuple(self.full[2:]) if self.full[0] else None
        images, all_gray = [], True
        for row, value in zip(rows.tolist(), self.source.values(self.ids[rows], self.column)):
            try:
                t, gray = image_tensor(decode_value(value, self.what, row, self.base), self.image_size)
            except PixelError as exc:
                raise RtlabError(f"{self.what}: row {row}: {exc}") from None
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | RtlabError]:
        rows = self.tasks[i]
        try:
            return torch.from_numpy(rows), self.images.read(rows)
        except RtlabError as exc:  # handed over as it is: a worker's raise would wrap it in its traceback
            return torch.from_numpy(rows), exc


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
                    if isinstance(block, RtlabError):
                        raise block
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
    saved = _saved_stats(path, images.full[1]) if path is not None else None
    if saved is not None:
        return saved
    if len(images) <= STATS_ROWS:
        mean, std = channel_stats(images)
    else:
        starts = np.linspace(0, len(images) - SHARD_ROWS, STATS_ROWS // SHARD_ROWS).astype(np.int64)
        rows = np.concatenate([np.arange(s, s + SHARD_ROWS) for s in starts])
        mean, std = channel_stats(images.read(rows))
        log.info("%s: channel statistics estimated from %d evenly spaced rows (set data.mean/data.std to give "
                 "them)", images.what, len(rows))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"mean": mean, "std": std})
        except OSError as exc:  # a read-only or full cache must not stop a run, as for the decoded cache
            log.warning("could not keep the channel statistics in %s (%s); they are computed again by the next "
                        "run", path, exc)
    return mean, std


def _saved_stats(path: Path, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The statistics kept at ``path``; None when there are none or the file is unreadable or damaged (an emptied
    or cut file, another channel count): they are computed again and the file rewritten."""
    try:
        saved = json.loads(path.read_text())
        mean, std = tuple(float(v) for v in saved["mean"]), tuple(float(v) for v in saved["std"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring the damaged channel statistics %s (%s: %s); computing them again", path,
                    type(exc).__name__, exc)
        return None
    if len(mean) != channels or len(std) != channels or not all(np.isfinite(mean + std)):
        log.warning("ignoring the channel statistics %s (not %d finite values per channel); computing them again",
                    path, channels)
        return None
    return mean, std


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
        n = len(rows) if opts.train_size is None else min(len(rows), opts.train_size + (opts.test_size or len(rows)))
        if opts.image_size:
            row = (opts.channels or 3) * opts.image_size ** 2
        else:
            base = getattr(source, "image_base", lambda: None)()
            t, _ = image_tensor(decode_value(rows.values(np.array([0]), image)[0], f"dataset '{name}'", 0, base),
                                None)
            row = (opts.channels or 3) * t.shape[1] * t.shape[2]
    except Exception:  # not parquet, no image column or no image in it, a hub id that cannot be reached, no rows:
        return "auto"  # the decode path says what is wrong, in its own words (nothing of streams the user never chose)
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
