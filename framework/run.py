"""The run: data → teacher and student → objective → optimiser → loop → evaluators.

The loop knows nothing about any method: it samples a batch of indices, asks the augmentation component for
views, asks the objective for the loss, steps the optimiser, asks the teacher updater to update and fires hooks.

Reliability lives beside the loop, not in it: :mod:`framework.state` captures and restores the training state
(``checkpoints/last``; ``rtlab train resume=RUN_DIR``), :mod:`framework.guards` stops a diverging run with the step
it diverged at, :mod:`framework.runlock` keeps two live runs out of one folder. Evaluators and the hooks after
training run one at a time, so a failing one is recorded in the summary without costing the training results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from framework import __version__, distributed, state
from framework.device import cpu_bf16_hazards, enable_determinism, resolve_device, resolve_dtype
from framework.checkpoint import atomic_write_text, checkpoint_paths, load_checkpoint, prefixed, save_checkpoint
from framework.data import ImageData, load_image_data
from framework.errors import PluginError, RtlabError
from framework.evaluation import BUILTIN_TARGETS, features, load_probe_datasets
from framework.guards import StepMetrics, check_parameters
from framework.models import Network, build_network, parameter_distance
from framework.plugin_manager import PluginManager, get_plugin_manager
from framework.runlock import RunLock
from framework.seeding import stream_seed

log = logging.getLogger("rtlab")


class _Muted:
    """Life-cycle hooks on ranks other than 0: every hook is a no-op (rank 0 writes and reports)."""

    def __getattr__(self, name: str) -> Callable[..., list]:
        return lambda **kwargs: []


class Run:
    """One training run. Plugins receive it in every life-cycle hook.

    ``resume=True`` continues from ``out_dir/checkpoints/last`` when it exists (see :mod:`framework.state`).
    """

    def __init__(self, cfg: DictConfig, out_dir: str | Path, pm: PluginManager | None = None,
                 resume: bool = False) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.pm = pm or get_plugin_manager()
        self.registry = self.pm.registry
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0  # only rank 0 writes files and fires life-cycle hooks
        self.hook = self.pm.hook if self.is_main else _Muted()
        self.device = distributed.local_device(resolve_device(cfg.train.device))
        self.amp_dtype = resolve_dtype(cfg.train.precision, self.device)
        # the dtype of the networks and their inputs: float64 for train.precision=fp64, else float32
        self.dtype = torch.float64 if cfg.train.precision == "fp64" else torch.float32
        self.resume = resume
        self.resumed_step: int | None = None  # the step a resumed run continued from
        self.step = 0
        self.epoch = 0  # completed epochs
        self.position = 0  # batches of the current epoch already trained
        self.perm: torch.Tensor | None = None  # the current epoch's data order (None between epochs)
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.extra_targets: dict[str, Any] = {}
        # True while training a step whose metrics will be logged: components may skip optional diagnostics
        # (e.g. the KL of a 65,536-way softmax) on the other steps
        self.logging_step = True
        self.data: ImageData
        self.teacher: Network
        self.student: Network
        self.step_metrics = StepMetrics(self.device)
        self.finite_step = -1  # the last step check_finite cleared
        self.lock: RunLock | None = None
        self.state_step: int | None = None  # step of the last training state written
        self._start_time = time.time()
        self.train_time = 0.0
        self.images_seen = 0

    # --------------------------------------------------------------------------------------------------- helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, images: torch.Tensor, normalize: Any = None) -> torch.Tensor:
        """uint8 or [0, 1] images → normalised float on the run's device, in the run's memory format.
        ``normalize`` defaults to the training data's normalisation (probe datasets bring their own)."""
        x = (normalize or self.normalize)(images.to(self.device, non_blocking=True))
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.cfg.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def new_network(self, seed: int) -> Network:
        """A freshly initialised backbone + head, determined by ``seed`` alone (built on the CPU)."""
        return build_network(self.registry, self.cfg.backbone, self.cfg.head, self.data.channels, self.data.size,
                             seed)

    def place(self, net: nn.Module) -> nn.Module:
        net = net.to(self.device, dtype=self.dtype)
        if self.cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    @property
    def epochs(self) -> int:
        """Epochs to train: ``train.epochs``, or ``train.sample_budget`` // train images when a budget is set."""
        budget = self.cfg.train.sample_budget
        if budget is None:
            return int(self.cfg.train.epochs)
        return max(1, int(budget) // len(self.data.train))

    @property
    def steps_per_epoch(self) -> int:
        n, bs = len(self.data.train), self.cfg.train.batch_size
        return n // bs if self.cfg.train.drop_last else math.ceil(n / bs)

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        if self.cfg.train.max_steps is not None:
            total = min(total, self.cfg.train.max_steps)
        return total

    @property
    def out_of_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.step >= self.cfg.train.max_steps

    def components(self) -> dict[str, Any]:
        """The run's components by role (``evaluator.<name>`` for evaluators): what the state protocol saves."""
        parts = {"teacher": self.teacher_init, "student": self.student_init, "updater": self.updater,
                 "objective": self.objective, "loss": self.loss_fn, "augment": self.augment,
                 "optimizer": self.optimizer_factory}
        parts.update({f"evaluator.{name}": e for name, e in self.evaluators.items()})
        return parts

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self) -> "Run":
        cfg = self.cfg
        if self.is_main:
            self.lock = RunLock(self.out_dir).acquire()
            self._check_folder()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            enable_determinism(self.device)
        if cfg.train.batch_size <= 0 or cfg.train.epochs < 0:
            raise RtlabError("train.batch_size must be positive and train.epochs non-negative")
        if cfg.train.sample_budget is not None and cfg.train.sample_budget <= 0:
            raise RtlabError(f"train.sample_budget must be a positive number of samples, got "
                             f"{cfg.train.sample_budget}")
        if self.is_main:
            atomic_write_text(self.out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            atomic_write_text(self.out_dir / "plugins.json", json.dumps(self.pm.listing(), indent=2))

        self.data = load_image_data(self.registry, cfg.data).to(self.device)
        if len(self.data.train) == 0:
            raise RtlabError("the train split is empty; check data.train_size and data.train_split")
        self.normalize = self.data.normalizer(self.device)
        self.probe_data = load_probe_datasets(self.registry, cfg.eval.datasets, self.data, self.device)
        self.order_gen = torch.Generator().manual_seed(stream_seed(cfg.train.seed, "order"))
        self.aug_gen = torch.Generator(device=self.device).manual_seed(stream_seed(cfg.train.seed, "augment"))
        self.augment = self.registry.build("augment", cfg.augment)
        self.teacher_init = self.registry.build("teacher", cfg.teacher)
        self.teacher = self.place(self.teacher_init.build(self))
        self.student_init = self.registry.build("student", cfg.student)
        self.student = self.place(self.student_init.build(self, self.teacher))
        if self.student is self.teacher or any(
                a is b for a, b in zip(self.student.parameters(), self.teacher.parameters())):
            raise RtlabError("the student initialiser returned the teacher itself; it must return a copy")
        self.updater = self.registry.build("updater", cfg.updater)
        if hasattr(self.updater, "setup"):
            self.updater.setup(self)
        self.loss_fn = self.registry.build("loss", cfg.loss) if cfg.get("loss") is not None else None
        self.objective = self.registry.build("objective", cfg.objective)
        extra = list(self.objective.setup(self) or [])
        self.teacher.requires_grad_(False)
        self.student.train()
        self.optimizer_factory = self.registry.build("optimizer", cfg.optimizer)
        self.trainable = [p for p in self.student.parameters() if p.requires_grad] + extra
        self.optimizer = self.optimizer_factory.build(self.trainable, self)
        self.evaluators = {name: self.registry.build("evaluator", node) for name, node in cfg.evaluator.items()}
        if self.evaluators and not self.cfg.eval.train_data and not self.probe_data:
            raise RtlabError("eval.train_data=false leaves nothing to probe; name datasets with eval.datasets=[NAME]")
        needs_labels = [n for n, e in self.evaluators.items() if getattr(e, "needs_labels", True)]
        if needs_labels and not (self.data.train.labelled and self.data.test.labelled) and not self.probe_data:
            raise RtlabError(f"evaluator(s) {', '.join(needs_labels)} need labels, but dataset '{self.data.name}' "
                             "has none; set data.label_column=NAME, or train without probes: evaluator=[] (or probe a "
                             "labelled dataset: eval.datasets=[NAME])")
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:
            hazards = cpu_bf16_hazards(self.student, self.prepare(self.data.train.images[:2]))
            if hazards:
                msg = (f"train.precision=bf16 switched to fp32: strided convolutions see 1x1 maps "
                       f"({', '.join(hazards[:3])}), where torch's CPU bf16 backward returns non-finite gradients")
                log.warning(msg)
                self.summary.setdefault("warnings", []).append(msg)
                self.amp_dtype = None
        if cfg.train.compile:  # in place: parameter names (and so checkpoints) stay those of the plain modules
            for net in (self.student, self.teacher):
                net.encoder.compile()
                net.head.compile()
        self._init_student = {k: v.detach().clone() for k, v in self.student.named_parameters()}
        self.summary["teacher_student_distance_init"] = parameter_distance(self.student, self.teacher)
        if self.resume:
            self.restore()
        if self.teacher_frozen:  # checked here once; check_finite skips it while it cannot change
            check_parameters([("teacher", self.teacher)], self.step, self._last_good())
        return self

    def _check_folder(self) -> None:
        """A fresh run never writes into the results of another one."""
        if self.resume:
            return
        taken = [n for n in ("summary.json", "metrics.jsonl", "checkpoints") if (self.out_dir / n).exists()]
        if taken:
            raise RtlabError(f"run folder {self.out_dir} already holds a run ({', '.join(taken)}); continue it with "
                             f"'rtlab train resume={self.out_dir}' or choose another folder (hydra.run.dir=…)")

    # ------------------------------------------------------------------------------------------- training state
    @property
    def state_path(self) -> Path:
        return self.out_dir / "checkpoints" / state.STATE_NAME

    def restore(self) -> bool:
        """Continue from ``checkpoints/last`` if the folder has one (False: nothing saved yet, start at step 0)."""
        if not checkpoint_paths(self.state_path)[1].exists():
            if (self.out_dir / "summary.json").exists():  # starting over would replace finished results
                raise RtlabError(f"the run in {self.out_dir} finished without a training state (train.state_every=0"
                                 "); it cannot be continued, start a new run")
            log.warning("%s holds no training state yet; starting from step 0", self.out_dir)
            return False
        tensors, meta = load_checkpoint(self.state_path)
        state.restore(self, tensors, meta, f"{self.state_path}.json")
        self.hook.rtlab_checkpoint_load(run=self, tensors=tensors, meta=meta)
        self.resumed_step = self.state_step = self.step
        log.info("resumed %s at step %d (epoch %d, batch %d)", self.out_dir, self.step, self.epoch + 1,
                 self.position)
        return True

    def _last_good(self) -> str:
        if self.state_step is None:
            return "no training state was saved yet"
        return f"the last good state checkpoints/{state.STATE_NAME} (step {self.state_step}) is kept"

    def check_finite(self) -> None:
        """Stop with :class:`framework.errors.TrainingDiverged` when a logged loss or a weight is not finite."""
        if self.finite_step == self.step:  # a log and a state save after one step: the weights are checked once
            return
        last_good = self._last_good()
        self.step_metrics.check(last_good)
        # a frozen teacher cannot turn non-finite: it is checked once, when the run is set up
        nets = [("student", self.student)] + ([] if self.teacher_frozen else [("teacher", self.teacher)])
        check_parameters(nets, self.step, last_good)
        self.finite_step = self.step

    def save_state(self) -> Path:
        """Write ``checkpoints/last`` (the full training state) after checking that it is finite."""
        self.check_finite()
        if not self.is_main:
            self.state_step = self.step
            return self.state_path
        tensors, meta = state.capture(self)
        self.hook.rtlab_checkpoint_save(run=self, tensors=tensors, meta=meta)
        path = save_checkpoint(self.state_path, tensors, meta)
        self.state_step = self.step
        return path

    def _state_due(self, epoch_end: bool) -> bool:
        t = self.cfg.train
        if epoch_end:
            return bool(t.state_every) and (self.epoch % t.state_every == 0 or self.epoch == self.epochs
                                              or self.out_of_steps)
        return bool(t.state_steps) and self.step % t.state_steps == 0

    @property
    def teacher_frozen(self) -> bool:
        return bool(getattr(self.updater, "frozen", False))

    # ---------------------------------------------------------------------------------------------- evaluation
    def probe_sets(self) -> dict[str, ImageData]:
        """The datasets the evaluators probe, by metric suffix: ``""`` is the training data (skipped when it has no
        labels or ``eval.train_data`` is false), then every ``eval.datasets`` entry."""
        sets = {"": self.data} if self.data.train.labelled and self.cfg.eval.train_data else {}
        return {**sets, **self.probe_data}

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Run every evaluator on every target of every probe dataset; frozen targets are evaluated only the first
        time. The results also hold the parameter distances ``teacher_student_distance`` and
        ``student_distance_from_init`` (no ``/``: they are not accuracies). A failing evaluator is recorded in the
        summary and training goes on."""
        results: dict[str, float] = {
            "teacher_student_distance": parameter_distance(self.student, self.teacher),
            "student_distance_from_init": parameter_distance(self.student, self._init_student),
        }
        cache: dict[str, Any] = {}
        for key, data in self.probe_sets().items() if self.evaluators else ():
            for target in self.cfg.eval.targets:
                name = f"{target}@{key}" if key else target
                frozen = target == "input" or (target in ("teacher", "teacher_bn") and self.teacher_frozen)
                if frozen and any(k.endswith(f"/{name}") for k in self.metrics):
                    continue
                try:
                    feats = features(self, target, data, cache)  # every rank embeds its share; all get every row
                except Exception as exc:  # an optional part: recorded, training goes on
                    self.record_error(f"feature extraction for eval target '{name}' at epoch {epoch}", exc)
                    continue
                for ename, evaluator in (self.evaluators.items() if self.is_main else ()):
                    try:
                        values = evaluator.evaluate(feats, self)
                    except Exception as exc:
                        plugin = self.registry.get("evaluator", ename).plugin
                        self.record_error(f"evaluator '{ename}' (plugin {plugin}) on {name} at epoch {epoch}", exc)
                        continue
                    for metric, value in values.items():
                        results[f"{metric}/{name}"] = float(value)
                del feats
        del cache
        results = distributed.broadcast(results)
        self.metrics.update(results)
        self.history.append({"epoch": epoch, "step": self.step, **results})
        for exc in self.call_each("rtlab_evaluate_end", run=self, epoch=epoch, results=results):
            self.record_error("rtlab_evaluate_end", exc)
        return results

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Exception]:
        """Every implementation of an after-training hook, failures collected (rank 0 only)."""
        return self.pm.call_each(hook_name, **kwargs) if self.is_main else []

    def record_error(self, where: str, exc: BaseException) -> None:
        """Note a failed optional part (evaluator, analysis, a plugin after training) in the summary and the log."""
        if isinstance(exc, (PluginError, RtlabError)) and where.startswith("rtlab_"):
            message = str(exc)
        else:
            detail = " ".join(str(exc).split())[:300]
            message = f"{where} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")
        log.error("%s", message)
        log.debug("%s", "".join(traceback.format_exception(exc)))
        self.summary.setdefault("errors", []).append({"step": self.step, "error": message})

    def _eval_due(self, epoch: int) -> bool:
        every = self.cfg.eval.every
        return epoch == self.epochs or (every > 0 and epoch % every == 0)

    # ------------------------------------------------------------------------------------------------- training
    def batches(self) -> Iterator[torch.Tensor]:
        """The index batches of the current epoch not trained yet (a fresh permutation from the data-order
        stream at the epoch's start; a resumed run continues its saved one)."""
        n, bs = len(self.data.train), self.cfg.train.batch_size
        if self.perm is None:
            self.perm = torch.randperm(n, generator=self.order_gen).to(self.device)
        stop = (n // bs) * bs if self.cfg.train.drop_last else n
        for i in range(self.position * bs, stop, bs):
            yield self.perm[i:i + bs]

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on the global ``batch`` of train-split positions (this process's shard of it)."""
        index = distributed.shard(batch)
        images = self.data.train.images[index].float().div_(255.0)
        views = [self.prepare(v) for v in self.augment.views(images, self.aug_gen)]
        self.optimizer_factory.schedule(self.optimizer, self)
        with self.autocast():
            loss, logs = self.objective.loss(self, views, index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        share = len(index) / len(batch)
        distributed.reduce_gradients(self.trainable, share)
        step = getattr(self.optimizer_factory, "step", None)  # clipping, last-layer freeze (after the reduction)
        step_logs = (step(self.optimizer, self) if step is not None else self.optimizer.step()) or {}
        self.updater.update(self)
        self.step += 1
        self.images_seen += len(batch)
        logs = {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in {**logs, **step_logs}.items()}}
        return logs if self.world_size == 1 else {k: v * share for k, v in logs.items()}  # summed at log time

    def fit(self) -> dict[str, Any]:
        """Train and evaluate (continuing a restored state); returns the summary, also in ``summary.json``."""
        cfg = self.cfg
        self.hook.rtlab_run_start(run=self)
        known = [*BUILTIN_TARGETS, *self.extra_targets]
        unknown = [t for t in cfg.eval.targets if t not in known]
        if unknown:
            raise RtlabError(f"unknown eval target(s) {', '.join(unknown)}; known: {', '.join(known)}")
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

    # -------------------------------------------------------------------------------------------------- results
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Student and teacher weights (and buffers) for a checkpoint."""
        return {**prefixed(self.student.state_dict(), "student."), **prefixed(self.teacher.state_dict(), "teacher.")}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "rtlab_version": __version__,
            "step": self.step,
            "epoch": self.epoch,
            "backbone": OmegaConf.to_container(self.cfg.backbone, resolve=True),
            "head": OmegaConf.to_container(self.cfg.head, resolve=True),
            "data": {"name": self.data.name, "channels": self.data.channels, "size": list(self.data.size),
                     "num_classes": self.data.num_classes, "mean": list(self.data.mean),
                     "std": list(self.data.std)},
            "metrics": dict(self.metrics),
        }

    def save_checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` (safetensors + JSON, atomic) with whatever plugins add to it (rank 0)."""
        if not self.is_main:
            return self.out_dir / "checkpoints" / f"{name}.json"
        check_parameters([("student", self.student), ("teacher", self.teacher)], self.step, self._last_good())
        tensors = self.state_tensors()
        meta = {**self.checkpoint_meta(), "kind": "weights"}
        self.hook.rtlab_checkpoint_save(run=self, tensors=tensors, meta=meta)
        return save_checkpoint(self.out_dir / "checkpoints" / name, tensors, meta)

    def finish(self) -> dict[str, Any]:
        wall = time.time() - self._start_time
        moved = parameter_distance(self.student, self._init_student)
        self.summary.update({
            "name": self.cfg.name,
            "metrics": dict(self.metrics),
            "best": _best(self.history),
            "steps": self.step,
            "epochs": self.epoch,
            "sample_budget": self.cfg.train.sample_budget,
            "train_images": len(self.data.train),
            "test_images": len(self.data.test),
            "wall_time_s": round(wall, 2),
            "train_time_s": round(self.train_time, 2),
            "images_per_s": round(self.images_seen / self.train_time, 1) if self.train_time else None,
            "student_distance_from_init": moved,
            "teacher_student_distance": parameter_distance(self.student, self.teacher),
            "device": str(self.device),
            "precision": (str(self.amp_dtype).replace("torch.", "") if self.amp_dtype
                          else "fp64" if self.dtype == torch.float64 else "fp32"),
            "world_size": self.world_size,
            "versions": {"rtlab": __version__, "torch": torch.__version__, "timm": _version("timm"),
                         "python": platform.python_version()},
        })
        if self.step > 0 and moved == 0.0:
            log.warning("the student did not move from its initialisation in %d steps", self.step)
            self.summary.setdefault("warnings", []).append("student did not move")
        for exc in self.call_each("rtlab_summarize", run=self, summary=self.summary):
            self.record_error("rtlab_summarize", exc)
        self.write_summary()
        errors = self.call_each("rtlab_run_end", run=self, summary=self.summary)
        for exc in errors:
            self.record_error("rtlab_run_end", exc)
        if errors:
            self.write_summary()
        return self.summary

    def write_summary(self) -> None:
        if not self.is_main:
            return
        atomic_write_text(self.out_dir / "summary.json", json.dumps(self.summary, indent=2, default=str))

    def record_crash(self, exc: BaseException) -> None:
        """``error.txt`` in the run folder: the traceback of what stopped the run (only in a folder we own)."""
        if self.lock is None or not self.is_main:
            return
        text = "".join(traceback.format_exception(exc))
        try:
            atomic_write_text(self.out_dir / "error.txt", f"step {self.step}, epoch {self.epoch}\n{text}")
        except OSError:
            pass

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _best(history: list[dict[str, Any]]) -> dict[str, float]:
    """Best value over evaluations (epoch ≥ 1) of every student metric (the paper's max-over-epochs), for the
    training data (``linear/student``) and every probe dataset (``linear/student@cifar100``)."""
    best: dict[str, float] = {}
    for row in history:
        if row["epoch"] < 1:
            continue
        for k, v in row.items():
            if "/" in k and k.split("/", 1)[1].split("@", 1)[0] == "student" and isinstance(v, float):
                best[k] = max(best.get(k, -math.inf), v)
    return best


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return ""


def run_training(cfg: DictConfig, out_dir: str | Path, pm: PluginManager | None = None,
                 prepare: Callable[[Run], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Build and run one training run; on failure plugins are told, ``error.txt`` records the traceback and
    finished files stay intact.

    ``prepare(run)`` is called between setup and training: analyses that drive runs use it to change the built
    run in place (load weights, attach pruning masks, start the schedule at a later epoch). ``resume`` continues
    the run in ``out_dir`` from its training state (restored during setup, before ``prepare``).
    """
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    run = Run(cfg, out_dir, pm, resume=resume)
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
