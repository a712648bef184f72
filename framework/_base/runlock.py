"""One live run per run folder: ``RUN_DIR/.lock`` holds the owner's PID and host.

The lock is an ``flock`` on that file, so the kernel releases it when the owner dies, even by SIGKILL; a lock
file left by a dead run is simply taken over. On file systems without ``flock`` the PID is checked instead
(same host: is that process alive? another host: refuse, and say how to take over).

A run refused before it owns its folder (:meth:`framework.api.Run.claim`) removes a lock file it created, so that
it leaves no trace; a process that opened the file just before sees after its ``flock`` that the file is gone and
starts over on a new one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

from framework._base.errors import RtlabError

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(path.read_text() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _who(owner: dict[str, Any]) -> str:
    return f"PID {owner.get('pid', '?')}" + (f" on {owner['host']}" if owner.get("host") else "")


class RunLock:
    """``with RunLock(run_dir):`` — refuses, with the owner's PID, a folder another live run is using.

    ``refusal(who)`` words the refusal for the command that asks (``who``: "PID N on HOST"); the default is the
    run folder's message, whose fix is another ``hydra.run.dir``."""

    def __init__(self, run_dir: str | Path, refusal: Callable[[str], str] | None = None) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.refusal = refusal
        self._fd: int | None = None
        self.created = False  # whether acquire() created the lock file (a refused run removes it again)

    def _in_use(self, owner: dict[str, Any]) -> RtlabError:
        if self.refusal is not None:
            return RtlabError(self.refusal(_who(owner)))
        return RtlabError(f"run folder {self.path.parent} is in use by a live run ({_who(owner)}); wait for it to "
                          "finish, stop it, or choose another folder (hydra.run.dir=…)")

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not self._still_linked(fd):  # a refused run removed the file between our open and flock
                os.close(fd)
                return self.acquire()
        except ImportError:  # no fcntl (Windows): fall back to the PID check
            self._check_pid()
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise self._in_use(_read_owner(self.path)) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            self._check_pid()
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, record)
        self._fd = fd
        self.created = not existed
        return self

    def _still_linked(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``self.path`` (the lock of a deleted file locks nothing)."""
        try:
            mine, there = os.fstat(fd), os.stat(self.path)
            return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
        except FileNotFoundError:
            return False

    def _check_pid(self) -> None:
        """The lock without ``flock``: the recorded owner must be dead (and on this host)."""
        owner = _read_owner(self.path)
        pid, host = owner.get("pid"), owner.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return
        if host and host != socket.gethostname():
            raise RtlabError(f"run folder {self.path.parent} is locked by PID {pid} on {host}, which this host "
                             f"cannot check; if that run is dead, delete {self.path}")
        if _pid_alive(pid):
            raise self._in_use(owner)

    def release(self, discard: bool = False) -> None:
        """Let go; ``discard`` also removes a lock file this lock created (a refused run leaves no trace)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            if discard and self.created:  # removed while held; a process that opened it meanwhile retries
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __del__(self) -> None:  # a Run that is set up but never finished (analyses, tools) lets go when dropped
        self.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_owner(run_dir: str | Path) -> dict[str, Any] | None:
    """The owner (``pid``, ``host``) of ``run_dir``'s lock while a live process holds it; None when the folder is
    free. Writes nothing: a folder without a lock file is free, and a recorded PID that is gone (its lock was
    released or died with it) is not asked about further."""
    path = Path(run_dir) / LOCK_NAME
    owner = _read_owner(path)
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    if owner.get("host") in (None, socket.gethostname()) and not _pid_alive(pid):
        return None
    try:  # a live PID may be another process by now: the lock itself says whether the run still holds it
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return owner
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return owner
        return owner if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL) else None
    finally:
        os.close(fd)  # drops the probe's shared lock
    return None


def refuse_if_live(run_dir: str | Path, refusal: Callable[[str], str] | None = None) -> None:
    """Refuse (the :class:`RunLock` message) a folder a live run holds; nothing is written."""
    owner = live_owner(run_dir)
    if owner is not None:
        raise RunLock(run_dir, refusal)._in_use(owner)


def clear_unfinished(run_dir: str | Path, refusal: Callable[[str], str] | None = None) -> None:
    """Delete what an interrupted or failed run left in ``run_dir``, under the folder's lock: a folder that a live
    process holds is refused (``refusal``), never touched. The lock file goes last, so that a run starting
    meanwhile waits for the lock and then finds the folder empty (or, after the lock file is gone, makes its own)."""
    folder = Path(run_dir)
    if not folder.exists():
        return
    lock = RunLock(folder, refusal).acquire()
    try:
        for child in folder.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        lock.path.unlink(missing_ok=True)
    finally:
        lock.release()
    try:
        folder.rmdir()
    except OSError:  # a run took the folder after the lock went: it is that run's now
        pass
