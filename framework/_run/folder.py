"""The run folder a run owns: its lock, the moment it claims the folder, and the crash record.

A fresh run never writes into another run's results, and a refused run leaves the folder as it was, byte for
byte: nothing is written before :meth:`RunFolder.claim`. Only rank 0 writes.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from framework._base import paths
from framework._base.errors import RtlabError, RunInterrupted
from framework._base.files import atomic_write_text
from framework._base.runlock import RunLock


class RunFolder:
    def __init__(self, out_dir: Path, is_main: bool, on_claim: Optional[Callable[[], None]] = None) -> None:
        self.path = Path(out_dir)
        self.is_main = is_main
        self.lock: Optional[RunLock] = None
        self.claimed = False
        self._on_claim = on_claim

    def acquire(self, resume: bool) -> None:
        """Take the folder's lock (one live run per folder); a fresh run refuses a folder that holds results."""
        if not self.is_main:
            return
        self.lock = RunLock(self.path).acquire()
        if resume:
            return
        taken = [n for n in (paths.SUMMARY, paths.METRICS, paths.CHECKPOINTS) if (self.path / n).exists()]
        if taken:
            raise RtlabError(f"run folder {self.path} already holds a run ({', '.join(taken)}); continue it with "
                             f"'rtlab train resume={self.path}' or choose another folder (hydra.run.dir=…)")

    def claim(self, cfg: DictConfig, listing: list[dict[str, Any]]) -> None:
        """From here on the folder is this run's: ``config.yaml`` and ``plugins.json`` are written, then whatever
        the caller writes on claiming (Hydra's files). ``error.txt`` too is only written into a claimed folder."""
        self.claimed = True
        if not self.is_main:
            return
        atomic_write_text(paths.config(self.path), OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_text(paths.plugins(self.path), json.dumps(listing, indent=2))
        if self._on_claim is not None:
            self._on_claim()

    def record_crash(self, exc: BaseException, where: str) -> None:
        """``error.txt``: the traceback of what stopped the run (``where``: its step and epoch)."""
        if not self.claimed or not self.is_main or isinstance(exc, RunInterrupted):  # nothing went wrong
            return
        text = "".join(traceback.format_exception(exc))
        try:
            atomic_write_text(paths.error(self.path), f"{where}\n{text}")
        except OSError:
            pass

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release(discard=not self.claimed)
