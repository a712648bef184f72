"""Multirun jobs that waste nothing: a job whose run folder already holds its run is skipped or continued.

Every Hydra multirun job (``rtlab train -m …``, any launcher: basic, joblib, submitit) looks at its run folder
before training:

* it holds a *finished* run (``summary.json``) of the same resolved configuration → the job is skipped;
* it holds an *unfinished* run of the same configuration → the job continues it from ``checkpoints/last``
  (exactly; from step 0 when no state was saved yet), as ``rtlab train resume=RUN_DIR`` would;
* it holds a run of another configuration → refused (one line, exit code 2), nothing is overwritten.

So a killed or pre-empted sweep, started again with the same command and the same ``hydra.sweep.dir``, trains
only what is missing; submitit's requeue of a pre-empted job lands in the same folder and continues it.

Local parallel sweeps: with ``hydra/launcher=joblib`` and no ``train.threads``, each job uses
``cores // n_jobs`` CPU threads (at least one), so that ``n_jobs × threads ≤ cores``; an explicit ``train.threads``
above that share is kept, with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from framework._base import paths
from framework.cli.resume import config_differences

log = logging.getLogger("rtlab")

NEW, SKIP, RESUME = "new", "skip", "resume"


def job_plan(run_dir: str | Path, cfg: DictConfig) -> str:
    """:data:`NEW`, :data:`SKIP` (finished with this configuration) or :data:`RESUME` (unfinished, same
    configuration) for a multirun job writing to ``run_dir``. A folder with another configuration's run is
    :data:`NEW`: the run then refuses to write into it."""
    folder = Path(run_dir)
    if not paths.config(folder).is_file():
        return NEW
    try:
        saved = OmegaConf.to_container(OmegaConf.load(paths.config(folder)))
    except Exception:
        return NEW
    task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    if config_differences(saved, OmegaConf.to_container(task, resolve=True)):
        return NEW
    return SKIP if paths.summary(folder).exists() else RESUME


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def joblib_jobs(n_jobs: Any, cores: int) -> int:
    """Parallel jobs of joblib's ``n_jobs`` (negative: cores + 1 + n_jobs, as joblib counts)."""
    n = 1 if n_jobs is None else int(n_jobs)
    return max(1, cores + 1 + n if n < 0 else n)


def pin_threads(launcher: Any, cfg: DictConfig) -> int | None:
    """Under the joblib launcher: the CPU threads of this job (set with ``torch.set_num_threads`` when
    ``train.threads`` is unset); None under other launchers."""
    target = str(OmegaConf.select(launcher, "_target_", default="") or "") if launcher is not None else ""
    if "joblib" not in target.lower():
        return None
    cores = available_cores()
    jobs = joblib_jobs(OmegaConf.select(launcher, "n_jobs", default=None), cores)
    share = max(1, cores // jobs)
    if cfg.train.threads:
        if int(cfg.train.threads) * jobs > cores:
            log.warning("train.threads=%s x %d joblib jobs exceeds %d cores; train.threads=%d fits",
                        cfg.train.threads, jobs, cores, share)
        return int(cfg.train.threads)
    torch.set_num_threads(share)
    return share
