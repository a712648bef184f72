"""Files on disk, written one way: atomic writes, the names of a run folder's files, the cache folder.

Every file rtlab writes that another process may read (checkpoints, summaries, caches, listings, analysis records)
goes through :func:`atomic_write_bytes`: a temporary file beside the target, fsync, rename over the target, fsync of
the folder. A reader sees the old file or the new one, never half of one, and a power cut keeps the new name.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def cache_dir() -> Path:
    """``$RTLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/rtlab``, else ``~/.cache/rtlab``: decoded datasets, stream
    statistics, the plugin listing."""
    if os.environ.get("RTLAB_CACHE_DIR"):
        return Path(os.environ["RTLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rtlab"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide results from collaborators


def atomic_write_bytes(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path`` (and fsync the
    folder, so the new name survives a power cut, unless the caller does that once for several files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, sync_dir: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), sync_dir)


def atomic_write_json(path: Path, obj: Any, sync_dir: bool = True, **dumps: Any) -> None:
    """``obj`` as JSON through :func:`atomic_write_text` (``dumps`` go to :func:`json.dumps`)."""
    atomic_write_text(path, json.dumps(obj, **dumps), sync_dir)
