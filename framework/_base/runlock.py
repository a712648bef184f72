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
import socket
from pathlib import Path
from typing import Any

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


class RunLock:
    """``with RunLock(run_dir):`` — refuses, with the owner's PID, a folder another live run is using."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.created = False  # whether acquire() created the lock file (a refused run removes it again)

    def _in_use(self, owner: dict[str, Any]) -> RtlabError:
        who = f"PID {owner.get('pid', '?')}" + (f" on {owner['host']}" if owner.get("host") else "")
        return RtlabError(f"run folder {self.path.parent} is in use by a live run ({who}); wait for it to finish, "
                          "stop it, or choose another folder (hydra.run.dir=…)")

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
