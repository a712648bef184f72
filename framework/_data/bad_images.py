"""Image files that cannot be decoded (truncated, corrupted, not an image): named, or skipped on request.

``datasets`` decodes a batch of images at once, so one broken file fails the whole batch without naming itself.
When that happens the batch is decoded again row by row to find the file: without ``data.skip_bad_images`` the run
stops with its path; with it the file is left out (with its label), and the run's ``summary.json`` lists it under
``skipped_images``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from framework._base.errors import RtlabError

log = logging.getLogger("framework._data.data")


def _where(ds: Any, column: str, row: int) -> str:
    """The file (or row) an image came from, read without decoding it."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    try:
        raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False)).with_format(None)
        return str((raw[row][column] or {}).get("path") or f"row {row}")
    except Exception:  # the dataset cannot say; the row number still finds it
        return f"row {row}"


def image_rows(view: Any, ds: Any, column: str, start: int, stop: int, what: str, skip: bool,
               skipped: list[tuple[int, str]] | None) -> list:
    """The decoded images of rows ``start:stop`` of ``view`` (``ds`` with the image column only); an unreadable
    image is refused with its file's path, or, with ``skip``, left out and recorded in ``skipped`` as
    (row, path)."""
    try:
        return view[start:stop][column]
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raised, find the file it failed on
        first = exc
    images, bad = [], 0
    for row in range(start, stop):
        try:
            images.append(view[row][column])
        except Exception as exc:  # noqa: BLE001
            where = _where(ds, column, row)
            if not skip:
                detail = " ".join(str(exc).split())[:100]
                raise RtlabError(f"cannot decode image {where} of {what} ({type(exc).__name__}: {detail}); replace "
                                 "or delete that file, or leave unreadable images out with data.skip_bad_images=true"
                                 ) from None
            bad += 1
            if skipped is not None:
                skipped.append((row, where))
    if not bad:  # not a broken file after all: the original error stands
        raise first
    return images


def drop_rows(labels: torch.Tensor, skipped: list[tuple[int, str]], what: str) -> torch.Tensor:
    """``labels`` without the rows whose images were skipped (and a warning naming the files)."""
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[[row for row, _ in skipped]] = False
    names = ", ".join(path for _, path in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    log.warning("left out %d unreadable image(s) of %s (data.skip_bad_images=true): %s", len(skipped), what, names)
    return labels[keep]
