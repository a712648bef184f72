"""The run: data → teacher and student → objective → optimiser → loop → evaluators.

The loop knows nothing about any method: it samples a batch of indices, asks the augmentation component for
views, asks the objective for the loss, steps the optimiser, asks the teacher updater to update and fires hooks.

:class:`Run` is the object every hook and component receives (what plugins may use of it: ``RunView``). Its parts
are collaborators in their own modules, handed what they need: ``build`` (setup), ``clock`` (where the run is),
``folder`` (lock and claim), ``state`` (``checkpoints/last``, resume), ``evaluation``, ``results`` (summary,
checkpoints), ``guards``, ``preemption`` and ``parallel`` (DDP). Evaluators and the hooks after training run one at
a time, so a failing one is recorded in the summary without costing the training results.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig

from framework._contract.plugin_manager import PluginManager, get_plugin_manager
from framework._nets import distributed
from framework._nets.device import resolve_device
from framework._nets.models import Network
from framework._nets.placement import Placement
from framework._run import build, evaluation
from framework._base.clock import Clock
from framework._run.folder import RunFolder
from framework._run.guards import Guard
from framework._run.parallel import loss_forward, views_of
from framework._run.preemption import Preemption
from framework._run.results import Results
from framework._run.state import TrainingState

log = logging.getLogger("rtlab")


class _Muted:
    """Life-cycle hooks on ranks other than 0: every hook is a no-op (rank 0 writes and reports)."""

    def __getattr__(self, name: str) -> Callable[..., list]:
        return lambda **kwargs: []


class Run:
    """One training run. ``resume=True`` continues from ``out_dir/checkpoints/last`` when it exists."""

    def __init__(self, cfg: DictConfig, out_dir: str | Path, pm: PluginManager | None = None,
                 resume: bool = False, claim: Callable[[], None] | None = None) -> None:
        self.cfg, self.out_dir, self.resume = cfg, Path(out_dir), resume
        self.pm = pm or get_plugin_manager()
        self.registry = self.pm.registry
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0  # only rank 0 writes files and fires life-cycle hooks
        self.hook = self.pm.hook if self.is_main else _Muted()
        # device, dtypes, memory format; the data's normalisation joins once the data is loaded
        self.placement = Placement.of(distributed.local_device(resolve_device(cfg.train.device)),
                                      cfg.train.precision, cfg.train.channels_last)
        self.clock = Clock()  # planned once the data is known (build.plan)
        self.folder = RunFolder(self.out_dir, self.is_main, claim)
        self.state = TrainingState(self.out_dir)
        self.results = Results()
        self.guard = Guard(self.placement.device)
        self.preemption = Preemption()  # SIGTERM/SIGUSR1/SIGUSR2/Ctrl-C: stop after the step, state saved
        self.resumed_step: int | None = None
        self.perm: torch.Tensor | None = None  # the open epoch's data order (None between epochs)
        self.logging_step = True  # this step's metrics will be logged: components may run optional diagnostics
        self._loss_forward: Callable | None = None  # built on the first step (framework._run.parallel)

    # --------------------------------------------------------------------------------------- RunView members
    step = property(lambda self: self.clock.step, doc="optimiser steps done")
    epoch = property(lambda self: self.clock.epoch, doc="epochs completed")
    epochs = property(lambda self: self.clock.epochs, doc="epochs to train")
    steps_per_epoch = property(lambda self: self.clock.steps_per_epoch)
    total_steps = property(lambda self: self.clock.total_steps, doc="steps the run will train")
    device = property(lambda self: self.placement.device)
    dtype = property(lambda self: self.placement.dtype)
    amp_dtype = property(lambda self: self.placement.amp_dtype)
    metrics = property(lambda self: self.results.metrics, doc="the latest evaluation's flat results")
    history = property(lambda self: self.results.history, doc="every evaluation's results")
    summary = property(lambda self: self.results.summary, doc="what summary.json will hold")
    metric_kinds = property(lambda self: self.results.metric_kinds)
    teacher_frozen = property(lambda self: bool(getattr(self.updater, "frozen", False)))

    def autocast(self):
        return self.placement.autocast()

    def prepare(self, images: torch.Tensor, normalize: Any = None) -> torch.Tensor:
        return self.placement.prepare(images, normalize)

    def place(self, net: torch.nn.Module) -> torch.nn.Module:
        return self.placement.place(net)

    def new_network(self, seed: int) -> Network:
        return build.new_network(self, seed)

    def save_checkpoint(self, name: str) -> Path:
        return self.results.save_checkpoint(self, name)

    def record_error(self, where: str, exc: BaseException) -> None:
        self.results.record_error(where, exc, self.clock.step)

    def start_at(self, epoch: int) -> None:
        """Continue as if ``epoch`` epochs had been trained (IMP rewinds the schedule this way)."""
        self.clock.start_at(epoch)

    # ----------------------------------------------------------------------------------------- collaborators
    def setup(self) -> "Run":
        build.setup(self)
        return self

    def claim(self) -> None:
        self.folder.claim(self.cfg, self.pm.listing())

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Exception]:
        """Every implementation of an after-training hook, failures collected (rank 0 only)."""
        return self.pm.call_each(hook_name, **kwargs) if self.is_main else []

    def evaluate(self, epoch: int) -> dict[str, float]:
        return evaluation.evaluate(self, epoch)

    def save_state(self) -> Path:
        return self.state.save(self)

    def release(self) -> None:
        self.folder.release()

    # ---------------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train and evaluate (continuing a restored state); returns the summary, also in ``summary.json``. A signal
        stops the run after its current step with the state saved (:mod:`framework._run.preemption`)."""
        with self.preemption.installed():
            summary = self.train_and_evaluate()
        self.preemption.check_after(self)
        return summary

    def train_and_evaluate(self) -> dict[str, Any]:
        clock = self.clock
        self.hook.rtlab_run_start(run=self)
        if self.cfg.eval.before and not self.history:
            self.evaluate(0)
        while clock.running:
            self.train_epoch()
        if not self.results.evaluated_at(clock.step):
            self.evaluate(clock.epoch)
        return self.results.finish(self)

    def train_epoch(self) -> int:
        """Train the open epoch's remaining batches, then end it (updater, ``rtlab_epoch_end``, the evaluation and
        the training state when due); returns its number."""
        cfg, clock = self.cfg, self.clock
        t0 = time.time()
        for index in self.batches():
            if clock.out_of_steps:
                break
            self.logging_step = clock.ends_log_window(cfg.train.log_every)
            self.guard.step_metrics.add(clock.step + 1, self.train_step(index))
            if self.logging_step:
                self.log_step()
            if self.state.due(self, epoch_end=False):
                self.save_state()
            if self.preemption.requested():
                self.preemption.stop(self)  # checkpoints/last at this step, then exit code 4 (or a requeue)
        self.results.train_time += time.time() - t0
        # train.max_steps ended the epoch early: its state is saved before the epoch end, so that resuming with a
        # larger train.max_steps continues the epoch exactly where it stopped
        cut_short = clock.epoch_cut_short
        if cut_short and cfg.train.state_every and self.state.saved_step != clock.step:
            self.save_state()
        epoch, self.perm = clock.end_epoch(), None
        self.updater.epoch_end(self)
        self.hook.rtlab_epoch_end(run=self, epoch=epoch)
        if not clock.out_of_steps and evaluation.eval_due(self, epoch):
            self.evaluate(epoch)
        if not cut_short and self.state.due(self, epoch_end=True):
            self.save_state()
        return epoch

    def batches(self) -> Iterator[torch.Tensor]:
        """The index batches of the open epoch not trained yet (a fresh permutation from the data-order stream at
        the epoch's start; a resumed run continues its saved one)."""
        n, bs = len(self.data.train), self.cfg.train.batch_size
        if self.perm is None:
            self.perm = self.data.train.order(self.order_gen).to(self.device)
        stop = (n // bs) * bs if self.cfg.train.drop_last else n
        yield from self.data.train.ahead(self.perm[i:i + bs] for i in range(self.clock.position * bs, stop, bs))

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on the global ``batch`` of train-split positions (this process's shard of it)."""
        index, views = views_of(self, batch)
        self.optimizer_factory.schedule(self.optimizer, self)
        if self._loss_forward is None:
            self._loss_forward = loss_forward(self)  # through DistributedDataParallel with several processes
        with self.autocast():
            loss, logs = self._loss_forward(views, index)
        self.optimizer.zero_grad(set_to_none=True)
        share = len(index) / len(batch)
        # DDP averages gradients over processes: scaled by world_size x share, they sum to the global batch's
        (loss if self.world_size == 1 else loss * (self.world_size * share)).backward()
        step = getattr(self.optimizer_factory, "step", None)  # clipping, last-layer freeze (after the reduction)
        step_logs = (step(self.optimizer, self) if step is not None else self.optimizer.step()) or {}
        self.updater.update(self)
        self.clock.tick()
        self.results.images_seen += len(batch)
        logs = {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in {**logs, **step_logs}.items()}}
        return logs if self.world_size == 1 else {k: v * share for k, v in logs.items()}  # summed at log time

    def log_step(self) -> None:
        """Check and hand the metrics since the last log to the ``rtlab_step_end`` hook (one host sync)."""
        window = self.guard.step_metrics
        if not len(window):
            return
        self.guard.check(self)
        distributed.all_reduce_(window.sums.values())  # shard-weighted values → global means
        metrics = window.flush()
        metrics["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["step"] = self.clock.step
        metrics["epoch"] = self.clock.fractional_epoch
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
        run.folder.record_crash(exc, f"step {run.clock.step}, epoch {run.clock.epoch}")
        raise
    finally:
        run.release()
        torch.use_deterministic_algorithms(deterministic)  # process-wide settings go back (in-process callers)
        torch.set_num_threads(threads)
