"""Parquet files as rows: the shards ``data.storage=stream`` reads (:class:`ParquetRows`), the files of a local
folder or a hub dataset by split (:func:`stream_files_of`), and the damage a loader would report without a name —
a truncated or corrupted shard, a split whose files hold no rows — refused by file and split."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from framework._base.errors import RtlabError


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
            try:
                meta = _open(path).metadata
            except RtlabError:
                raise
            except Exception as exc:  # noqa: BLE001 - a truncated shard: pyarrow's errors vary
                raise unreadable_parquet(path, exc) from None
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

        parts = []
        for p in self.files:
            try:
                parts.append(_open(p).read(columns=[name]).column(0).combine_chunks())
            except Exception as exc:  # noqa: BLE001
                raise unreadable_parquet(p, exc) from None
        return pa.concat_arrays(parts).to_numpy(zero_copy_only=False)

    def _group(self, g: int, column: str):
        if self._pid != os.getpid():
            self._pid, self._handles, self._tables = os.getpid(), {}, OrderedDict()
        if g not in self._tables:
            f, rg = self.groups[g]
            try:
                handle = self._handles.get(f) or self._handles.setdefault(f, _open(self.files[f]))
                self._tables[g] = handle.read_row_group(rg, columns=[column]).column(0)
            except Exception as exc:  # noqa: BLE001 - a corrupted page, a file cut after it was listed
                raise unreadable_parquet(self.files[f], exc) from None
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


def _local_data_files(p: Path) -> dict[str, list[str]]:
    """Split → data files of a local folder, split names from the file names as ``datasets`` infers them."""
    from datasets.data_files import DataFilesDict, get_data_patterns  # lazy: as datasets

    return {str(k): list(v) for k, v in DataFilesDict.from_patterns(get_data_patterns(str(p)),
                                                                     base_path=str(p)).items()}


def unreadable_parquet(path: str, exc: BaseException) -> RtlabError:
    detail = " ".join(str(exc).split())[:160]
    return RtlabError(f"cannot read parquet file {path} ({type(exc).__name__}: {detail}); it is truncated or "
                      "corrupted: copy or download it again, or remove it")


def check_parquet_files(path: str | os.PathLike) -> None:
    """Refuse, by file, the parquet files of a local file or folder that cannot be read (a truncated or corrupted
    shard) and, by split, a split whose files hold no rows. What ``datasets`` would report as a generation error
    without a name. Nothing to say (other files, a hub id): returns."""
    import pyarrow.parquet as pq  # lazy: as datasets

    p = Path(path).expanduser()
    try:
        files = {"train": [str(p)]} if p.is_file() else _local_data_files(p) if p.is_dir() else {}
    except Exception:  # noqa: BLE001 - no data files: the loader's own message says so
        return
    for split, paths in files.items():
        rows = 0
        parquet = [f for f in paths if f.endswith(".parquet")]
        for f in parquet:
            try:
                rows += pq.ParquetFile(f).metadata.num_rows
            except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a broken footer vary
                raise unreadable_parquet(f, exc) from None
        if parquet and len(parquet) == len(paths) and rows == 0:
            raise RtlabError(empty_split(split, parquet))


def empty_split(split: str, files: Sequence[str]) -> str:
    names = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    fix = (" (without a test split, data.test_fraction of the train split is held out)"
           if split in ("test", "validation", "valid", "val") else "")
    return f"the {split} split is empty: {names} hold(s) no rows; add images to it, or remove it{fix}"


def stream_files_of(path: str, config_name: str | None = None, revision: str | None = None
                    ) -> dict[str, list[str]]:
    """Split → parquet files of a local parquet file or folder (split names from the file names, as ``datasets``
    infers them), or of a hub dataset (its ``hf://`` data files; online)."""
    p = Path(path).expanduser()
    if p.is_file():
        files = {"train": [str(p)]}
    elif p.is_dir():
        try:
            files = _local_data_files(p)
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
