"""The run: data → teacher and student → objective → optimiser → loop → evaluators.

The loop knows nothing about any method: it samples a batch of indices, asks the augmentation component for
views, asks the objective for the loss, steps the optimiser, asks the teacher updater to update and fires hooks.

Reliability lives beside the loop, not in it: :mod:`framework._run.state` captures and restores the training state
(``checkpoints/last``; ``rtlab train resume=RUN_DIR``), :mod:`framework._run.guards` stops a diverging run with the step
it diverged at, :mod:`framework._base.runlock` keeps two live runs out of one folder. Evaluators and the hooks after
training run one at a time, so a failing one is recorded in the summary without costing the training results.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig

from framework._nets import distributed
from framework._run.build import RunBuild
from framework._data.data import ImageData
from framework._nets.device import resolve_device
from framework._nets.placement import Placement
from framework._base.errors import RtlabError
from framework._run.evaluation import BUILTIN_TARGETS, RunEvaluation
from framework._run.guards import StepMetrics
from framework._nets.models import Network
from framework._contract.plugin_manager import PluginManager, get_plugin_manager
from framework._run.preemption import Preemption
from framework._run.results import RunResults
from framework._base.runlock import RunLock
from framework._run.state import TrainingState

log = logging.getLogger("rtlab")


class _Muted:
    """Life-cycle hooks on ranks other than 0: every hook is a no-op (rank 0 writes and reports)."""

    def __getattr__(self, name: str) -> Callable[..., list]:
        return lambda **kwargs: []


class Run(RunBuild, TrainingState, RunEvaluation, RunResults):
    """One training run. Plugins receive it in every life-cycle hook.

    ``resume=True`` continues from ``out_dir/checkpoints/last`` when it exists (see :mod:`framework._run.state`).
    """

    def __init__(self, cfg: DictConfig, out_dir: str | Path, pm: PluginManager | None = None,
                 resume: bool = False, claim: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.pm = pm or get_plugin_manager()
        self.registry = self.pm.registry
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0  # only rank 0 writes files and fires life-cycle hooks
        self.hook = self.pm.hook if self.is_main else _Muted()
        # device, parameter dtype (float64 for train.precision=fp64), autocast dtype, memory format; the data's
        # normalisation joins once the data is loaded
        self.placement = Placement.of(distributed.local_device(resolve_device(cfg.train.device)),
                                      cfg.train.precision, cfg.train.channels_last)
        self.resume = resume
        self.resumed_step: int | None = None  # the step a resumed run continued from
        self.step = 0
        self.epoch = 0  # completed epochs
        self.position = 0  # batches of the current epoch already trained
        self.perm: torch.Tensor | None = None  # the current epoch's data order (None between epochs)
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.metric_kinds: dict[str, Any] = {}  # by metric name, from the evaluators (framework._base.metrics)
        # True while training a step whose metrics will be logged: components may skip optional diagnostics
        # (e.g. the KL of a 65,536-way softmax) on the other steps
        self.logging_step = True
        self.data: ImageData
        self.teacher: Network
        self.student: Network
        self.step_metrics = StepMetrics(self.device)
        self.finite_step = -1  # the last step check_finite cleared
        self.lock: RunLock | None = None
        self.claimed = False  # whether the run owns its folder yet (see RunBuild.claim)
        self._on_claim = claim
        self.state_step: int | None = None  # step of the last training state written
        self._start_time = time.time()
        self.train_time = 0.0
        self.images_seen = 0
        self._loss_forward: Callable | None = None  # built on the first step (framework._run.parallel)
        self.preemption = Preemption()  # SIGTERM/SIGUSR1/SIGUSR2/Ctrl-C: stop after the step, state saved

    # ------------------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train and evaluate (continuing a restored state); returns the summary, also in ``summary.json``. A signal
        stops the run after its current step with the state saved (:mod:`framework._run.preemption`)."""
        with self.preemption.installed():
            summary = self.train_and_evaluate()
        self.preemption.check_after(self)
        return summary

    def train_and_evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        self.hook.rtlab_run_start(run=self)
        unknown = [t for t in cfg.eval.targets if t not in BUILTIN_TARGETS]
        if unknown:
            raise RtlabError(f"unknown eval target(s) {', '.join(unknown)}; known: {', '.join(BUILTIN_TARGETS)}")
        if cfg.eval.before and not self.history:
            self.evaluate(0)
        while self.epoch < self.epochs and not (self.out_of_steps and self.position == 0):
            epoch = self.epoch + 1
            t0 = time.time()
            for index in self.batches():
                if self.out_of_steps:
                    break
                self.logging_step = self._logs_after(self.step + 1, self.position + 1)
                self.step_metrics.add(self.step + 1, self.train_step(index))
                self.position += 1
                if self.logging_step:
                    self.log_step(epoch)
                if self._state_due(epoch_end=False):
                    self.save_state()
                if self.preemption.requested():
                    self.preemption.stop(self)  # checkpoints/last at this step, then exit code 4 (or a requeue)
            self.train_time += time.time() - t0
            # train.max_steps ended the epoch early: its state is saved before the epoch end, so that resuming
            # with a larger train.max_steps continues the epoch exactly where it stopped
            partial = self.position < self.steps_per_epoch
            if partial and self.cfg.train.state_every and self.state_step != self.step:
                self.save_state()
            self.epoch, self.position, self.perm = epoch, 0, None
            self.updater.epoch_end(self)
            self.hook.rtlab_epoch_end(run=self, epoch=epoch)
            if not self.out_of_steps and self._eval_due(epoch):
                self.evaluate(epoch)
            if not partial and self._state_due(epoch_end=True):
                self.save_state()
        if not self.history or self.history[-1]["step"] != self.step:
            self.evaluate(self.epoch)
        return self.finish()

    def batches(self) -> Iterator[torch.Tensor]:
        """The index batches of the current epoch not trained yet (a fresh permutation from the data-order
        stream at the epoch's start; a resumed run continues its saved one)."""
        n, bs = len(self.data.train), self.cfg.train.batch_size
        if self.perm is None:
            self.perm = self.data.train.order(self.order_gen).to(self.device)
        stop = (n // bs) * bs if self.cfg.train.drop_last else n
        yield from self.data.train.ahead(self.perm[i:i + bs] for i in range(self.position * bs, stop, bs))

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on the global ``batch`` of train-split positions (this process's shard of it)."""
        index, views = self.views_of(batch)
        self.optimizer_factory.schedule(self.optimizer, self)
        with self.autocast():
            loss, logs = self.forward_loss(views, index)
        self.optimizer.zero_grad(set_to_none=True)
        share = len(index) / len(batch)
        # DDP averages gradients over processes: scaled by world_size x share, they sum to the global batch's
        (loss if self.world_size == 1 else loss * (self.world_size * share)).backward()
        step = getattr(self.optimizer_factory, "step", None)  # clipping, last-layer freeze (after the reduction)
        step_logs = (step(self.optimizer, self) if step is not None else self.optimizer.step()) or {}
        self.updater.update(self)
        self.step += 1
        self.images_seen += len(batch)
        logs = {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in {**logs, **step_logs}.items()}}
        return logs if self.world_size == 1 else {k: v * share for k, v in logs.items()}  # summed at log time

    def _logs_after(self, step: int, position: int) -> bool:
        """Whether optimiser step ``step`` (the ``position``-th batch of its epoch) ends a logging window."""
        t = self.cfg.train
        return (step % t.log_every == 0 or position == self.steps_per_epoch
                or (t.max_steps is not None and step >= t.max_steps))

    def log_step(self, epoch: int) -> None:
        """Check and hand the metrics since the last log to the ``rtlab_step_end`` hook (one host sync)."""
        if not len(self.step_metrics):
            return
        self.check_finite()
        distributed.all_reduce_(self.step_metrics.sums.values())  # shard-weighted values → global means
        metrics = self.step_metrics.flush()
        metrics["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["step"] = self.step
        metrics["epoch"] = (epoch - 1) + self.position / self.steps_per_epoch
        self.hook.rtlab_step_end(run=self, metrics=metrics)


def run_training(cfg: DictConfig, out_dir: str | Path, pm: PluginManager | None = None,
                 prepare: Callable[[Run], None] | None = None, resume: bool = False,
                 claim: Callable[[], None] | None = None) -> dict[str, Any]:
    """Build and run one training run; on failure plugins are told, ``error.txt`` records the traceback and
    finished files stay intact.

    ``prepare(run)`` is called between setup and training: analyses that drive runs use it to change the built
    run in place (load weights, attach pruning masks, start the schedule at a later epoch). ``resume`` continues
    the run in ``out_dir`` from its training state (restored during setup, before ``prepare``). ``claim()`` is
    called once the run owns ``out_dir`` (the CLI writes Hydra's files then; see :mod:`framework.cli.runfolder`).
    """
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    run = Run(cfg, out_dir, pm, resume=resume, claim=claim)
    try:
        run.setup()
        if prepare is not None:
            prepare(run)
        return run.fit()
    except BaseException as exc:
        for err in run.call_each("rtlab_run_error", run=run, error=exc):  # never masks the original error
            log.error("while handling a run error: %s", err)
        run.record_crash(exc)
        raise
    finally:
        run.release()
        torch.use_deterministic_algorithms(deterministic)  # process-wide settings go back (in-process callers)
        torch.set_num_threads(threads)
