"""What an analysis works with: :class:`AnalysisContext` (its configuration, folder, the runs it studies, training
runs that resume) — the contract between ``rtlab analyze`` and every analysis component, built-in or third-party.

An analysis is a component of kind ``analysis`` whose options subclass :class:`framework.api.AnalysisOptions`;
``factory(options)`` returns an object with ``run(ctx) -> dict`` (JSON-able results) and ``render(out_dir, results)
-> str`` (plots and a Markdown summary).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig

from framework._base import paths
from framework._base.errors import RtlabError
from framework._base.registry import to_options
from framework._config.compose import check_config, compose, with_values
from framework._run.loop import Run, run_training
from framework._run.opened import LoadedRun, load_run

log = logging.getLogger("rtlab")

KIND = "analysis"


class AnalysisContext:
    """Handed to ``analysis.run(ctx)``.

    ``runs`` are the run folders the analysis studies (``rtlab analyze NAME RUN [RUN …]``); with runs, ``cfg`` is the
    first run's configuration (its data, backbone, evaluators) with the analysis's options and the command's
    overrides on top, so :meth:`evaluation_run` and :meth:`train` work on the studied run's setting.
    """

    def __init__(self, name: str, cfg: DictConfig, overrides: Sequence[str], out_dir: Path, pm: Any,
                 runs: Sequence[Path] = ()) -> None:
        self.name = name
        self.cfg = cfg
        self.overrides = list(overrides)
        self.out_dir = Path(out_dir)
        self.pm = pm
        self.registry = pm.registry
        self.runs = [Path(r) for r in runs]
        self._open: list[Run] = []  # evaluation runs: their run-folder locks are released when the analysis ends

    def close(self) -> None:
        for run in self._open:
            run.release()
        self._open.clear()

    @property
    def options(self) -> Any:
        """The analysis's options dataclass."""
        return to_options(self.cfg[KIND])

    def open_run(self, folder: Optional[Path | str] = None, device: str = "auto") -> LoadedRun:
        """A studied run (default: the first of ``runs``) opened with :func:`framework.api.load_run`."""
        if folder is None:
            if not self.runs:
                raise RtlabError(f"analysis '{self.name}' studies a run; name it: rtlab analyze {self.name} RUN_DIR")
            folder = self.runs[0]
        return load_run(folder, self.registry, device)

    def compose(self, extra: Sequence[str] = ()) -> DictConfig:
        """The analysis's configuration with ``extra`` overrides applied after the user's."""
        if self.runs:  # the studied run's configuration: values change, components stay the run's
            cfg = with_values(self.cfg, extra, self.registry)
        else:
            cfg = compose([*self.overrides, *extra], self.registry)
        check_config(cfg, self.registry)
        return cfg

    def train(self, folder: str, extra: Sequence[str] = (), prepare: Callable[[Any], None] | None = None,
              cfg: DictConfig | None = None) -> dict:
        """Train one run into ``out_dir/folder`` (the analysis's configuration + ``extra``) and return its summary.

        A run whose ``summary.json`` exists is finished and is not trained again; a folder without one is what an
        interrupted run left behind and is started over (refused while another process holds it).
        """
        out = self.out_dir / folder
        if paths.summary(out).exists():
            return json.loads(paths.summary(out).read_text())
        if out.exists():
            log.warning("restarting the unfinished run %s", out)
            shutil.rmtree(out)
        cfg = cfg if cfg is not None else self.compose(extra)
        print(f"rtlab analyze {self.name}: training {folder}", flush=True)
        return run_training(cfg, out, self.pm, prepare)

    def evaluation_run(self, folder: str = "eval") -> Run:
        """A run built from the analysis's configuration and never trained — data on its device, networks of the
        analysed architecture, evaluators — to load the weights an analysis studies into. Its folder lock is
        released when the analysis ends."""
        run = Run(self.cfg, self.out_dir / folder, self.pm)
        self._open.append(run)
        return run.setup()

    def pretrained(self, name: str) -> Path:
        """The folder of pretrain run ``name`` (``analysis.pretrain.NAME``), trained first when missing."""
        runs = self.cfg[KIND].get("pretrain") or {}
        if name not in runs:
            known = ", ".join(runs) or "none"
            raise RtlabError(f"@{name} names no run of analysis.pretrain (defined: {known}); add "
                             f"+analysis.pretrain.{name}=[OVERRIDES] or name a checkpoint path")
        folder = f"pretrain/{name}"
        if not paths.summary(self.out_dir / folder).exists():
            cfg = compose(list(runs[name]), self.registry)
            check_config(cfg, self.registry)
            self.train(folder, cfg=cfg, prepare=lambda run: run.save_checkpoint("initial"))
        return self.out_dir / folder
