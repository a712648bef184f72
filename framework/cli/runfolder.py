"""Nothing is written into a run folder until the run is known to own it.

Hydra would write ``.hydra/{config,hydra,overrides}.yaml`` and open its log file in the run folder before the job
starts, so a command refused a moment later (the folder holds a finished run; a resume whose overrides do not fit
the saved state) would already have rewritten the files a later ``resume=`` reads. ``rtlab train`` therefore runs
Hydra with ``hydra.output_subdir=null`` and a delayed log file (:func:`defer_hydra_writes`); inside the job a
:class:`FolderClaim` holds the log records in memory and writes Hydra's files itself when
:meth:`framework.api.Run.claim` says the folder is the run's: a fresh folder once it is known to hold no other
run, a resumed one once its training state has been restored. A refused command leaves every byte as it was.

:func:`os_error_line` turns the file-system failures a user can fix (a read-only folder, a full disk) into one
line that names the file and the fix.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write

from framework._base import paths
from framework._base.errors import RtlabError
from framework._base.files import NO_SPACE, READ_ONLY, atomic_write_text
from framework._config.compose import compose

SUBDIR_KEY = "hydra.output_subdir"
DEFAULT_SUBDIR = ".hydra"


def _is_key(arg: str, key: str) -> bool:
    return arg.lstrip("+~").split("=", 1)[0] == key


def defer_hydra_writes(argv: Sequence[str], hydra_cfg: Any = None) -> tuple[list[str], str | None]:
    """``argv`` with Hydra's own run-folder writes turned off, and the folder (below the run folder) where the
    job writes them itself once it owns the folder (None: the user turned them off).

    ``hydra_cfg`` (the composed ``hydra`` node, when known) names the log handlers that write files: they are
    opened only when the first record is written, so that a refused command does not even create the file."""
    subdir: str | None = DEFAULT_SUBDIR
    out = []
    for arg in argv:
        if _is_key(arg, SUBDIR_KEY):
            value = arg.split("=", 1)[1].strip().strip("'\"")
            subdir = None if value in ("null", "~", "") else value
        else:
            out.append(arg)
    if hydra_cfg is not None:
        handlers = (hydra_cfg.get("job_logging") or {}).get("handlers") or {}
        for name, handler in handlers.items():
            if str(handler.get("class", "")) == "logging.FileHandler" and "delay" not in handler:
                out.append(f"++hydra.job_logging.handlers.{name}.delay=true")
    return [*out, f"{SUBDIR_KEY}=null"], subdir


def _is_delay(arg: str) -> bool:
    return arg.startswith("++hydra.job_logging.handlers.") and arg.endswith(".delay=true")


def prepare_hydra_argv(argv: Sequence[str], overrides: Sequence[str], registry: Any, config_dirs: Sequence[str],
                       multirun: bool) -> tuple[list[str], str | None]:
    """The ``rtlab train`` arguments handed to Hydra (see :func:`defer_hydra_writes`) after refusing a run folder
    that cannot be written; returns them and the subfolder for Hydra's files."""
    if multirun:  # sweep values do not compose as one config: Hydra's files wait, the log file is opened as usual
        return defer_hydra_writes(argv)

    hydra_cfg = compose(overrides, registry, config_dirs, hydra_config=True).hydra
    try:
        run_dir = OmegaConf.select(hydra_cfg, "run.dir")
    except Exception:  # a run-folder pattern that needs a running job to resolve
        run_dir = None
    if run_dir:
        check_writable(str(run_dir))
    return defer_hydra_writes(argv, hydra_cfg)


class _Held(logging.Handler):
    """Keeps the records meant for a file handler until the run owns its folder."""

    def __init__(self, target: logging.FileHandler) -> None:
        super().__init__(target.level)
        self.target = target
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class FolderClaim:
    """Inside a Hydra job: the job's log file is held back and Hydra's files are not written until :meth:`claim`
    (see the module notes). :meth:`close` drops what was held when the folder was never claimed."""

    def __init__(self, output_dir: str | Path, subdir: str | None, task_cfg: Any = None) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.subdir = subdir
        self.task_cfg = task_cfg  # the job's config as Hydra hands it over (unresolved), for .hydra/config.yaml
        self.claimed = False
        self._held: list[tuple[logging.Logger, _Held]] = []
        for logger in [logging.getLogger(), *[v for v in logging.Logger.manager.loggerDict.values()
                                              if isinstance(v, logging.Logger)]]:
            for handler in list(logger.handlers):
                if isinstance(handler, logging.FileHandler) and self._inside(handler.baseFilename):
                    held = _Held(handler)
                    logger.removeHandler(handler)
                    logger.addHandler(held)
                    self._held.append((logger, held))

    def _inside(self, filename: str) -> bool:
        try:
            return Path(filename).resolve().is_relative_to(self.output_dir)
        except (OSError, ValueError):
            return False

    def claim(self) -> None:
        """The run owns the folder: write Hydra's files and the held log records, and log straight to the file."""
        if self.claimed:
            return
        self.claimed = True
        if self.subdir is not None:
            self._write_hydra_files(self.output_dir / self.subdir)
        for logger, held in self._held:
            logger.removeHandler(held)
            logger.addHandler(held.target)
            for record in held.records:
                if record.levelno >= held.target.level:
                    held.target.handle(record)
        self._held = []

    def _write_hydra_files(self, folder: Path) -> None:
        """What Hydra writes at the start of a job (with ``output_subdir`` as the user set it), atomically."""

        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):
            hydra_cfg.hydra.output_subdir = self.subdir
            given = OmegaConf.to_container(hydra_cfg.hydra.overrides.hydra, resolve=False)  # ${…} stay as written
            hydra_cfg.hydra.overrides.hydra = [o for o in given if not _is_key(o, SUBDIR_KEY) and not _is_delay(o)]
        if self.task_cfg is not None:
            atomic_write_text(paths.config(folder), OmegaConf.to_yaml(self.task_cfg), sync_dir=False)
        atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg), sync_dir=False)
        atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))

    def close(self) -> None:
        """Drop the held records and the log file of a folder that was never claimed (the command was refused):
        nothing logged later in this process may land there either."""
        for logger, held in self._held:
            logger.removeHandler(held)
            held.target.close()  # delayed: it was never opened, so no file was created
        self._held = []


def check_writable(run_dir: str | Path) -> None:
    """Refuse, before anything runs, a run folder that cannot be written (read-only file system, no permission)."""
    path = Path(run_dir).expanduser().absolute()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise RtlabError(f"cannot write the run folder {path}: {probe} is read-only; choose a writable folder with "
                         "hydra.run.dir=DIR")


def os_error_line(exc: BaseException, out_dir: str | Path) -> str | None:
    """One line for a file-system failure a user can fix (None for any other error)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    where = exc.filename or out_dir
    if exc.errno in NO_SPACE:
        return (f"no space left on device while writing {where}; the training state saved before is kept: free "
                f"some space, then continue with 'rtlab train resume={out_dir}'")
    if exc.errno in READ_ONLY:
        return (f"cannot write {where} ({os.strerror(exc.errno).lower()}); choose a writable run folder with "
                "hydra.run.dir=DIR")
    return None
