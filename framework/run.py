"""The run: data → teacher and student → objective → optimiser → loop → evaluators.

The loop knows nothing about any method: it samples a batch of indices, asks the augmentation component for
views, asks the objective for the loss, steps the optimiser, asks the teacher updater to update and fires hooks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from framework import __version__
from framework.checkpoint import atomic_write_text, prefixed
from framework.data import ImageData, load_image_data
from framework.errors import RtlabError
from framework.evaluation import BUILTIN_TARGETS, features, load_probe_datasets
from framework.models import Network, build_network, parameter_distance
from framework.plugin_manager import PluginManager, get_plugin_manager

log = logging.getLogger("rtlab")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RtlabError(f"train.device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RtlabError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = no autocast: fp32, or fp64 networks). ``auto``: bf16 on CUDA, fp32 elsewhere
    (see :func:`cpu_bf16_hazards` for why the CPU is not bf16 by default)."""
    table = {"fp32": None, "fp64": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision not in table:
        raise RtlabError(f"train.precision must be auto, fp32, bf16, fp16 or fp64, got '{precision}'")
    if precision == "fp16" and device.type == "cpu":
        raise RtlabError("train.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if precision == "fp64" and device.type == "mps":
        raise RtlabError("train.precision=fp64 is not supported on MPS; use train.device=cpu or a CUDA GPU")
    return table[precision]


def cpu_bf16_hazards(net: nn.Module, example: torch.Tensor) -> list[str]:
    """Strided convolutions that see 1x1 inputs: in torch 2.14's CPU bf16 kernels their backward pass returns
    non-finite gradients about half of the time (measured: 100 of 200 steps for a 3x3/stride-2 conv)."""
    hits: list[str] = []
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and max(m.kernel_size) > 1:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: hits.append(name) if inp[0].shape[-2:] == (1, 1) else None))
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(example)
    finally:
        net.train(was)
        for h in hooks:
            h.remove()
    return hits


def stream_seed(base: int, stream: str) -> int:
    """A 63-bit seed for a named random stream, stable across processes and platforms."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{base}:{stream}".encode()).digest()[:8], "little") >> 1


class Run:
    """One training run. Plugins receive it in every life-cycle hook."""

    def __init__(self, cfg: DictConfig, out_dir: str | Path, pm: PluginManager | None = None) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.pm = pm or get_plugin_manager()
        self.registry = self.pm.registry
        self.hook = self.pm.hook
        self.device = resolve_device(cfg.train.device)
        self.amp_dtype = resolve_dtype(cfg.train.precision, self.device)
        # the dtype of the networks and their inputs: float64 for train.precision=fp64, else float32
        self.dtype = torch.float64 if cfg.train.precision == "fp64" else torch.float32
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.extra_targets: dict[str, Any] = {}
        self.data: ImageData
        self.teacher: Network
        self.student: Network
        self._start_time = time.time()
        self._train_time = 0.0
        self._images_seen = 0

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

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self) -> "Run":
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.batch_size <= 0 or cfg.train.epochs < 0:
            raise RtlabError("train.batch_size must be positive and train.epochs non-negative")
        if cfg.train.sample_budget is not None and cfg.train.sample_budget <= 0:
            raise RtlabError(f"train.sample_budget must be a positive number of samples, got "
                             f"{cfg.train.sample_budget}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
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
        self.student = self.place(self.registry.build("student", cfg.student).build(self, self.teacher))
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
        params = [p for p in self.student.parameters() if p.requires_grad] + extra
        self.optimizer = self.optimizer_factory.build(params, self)
        self.evaluators = {name: self.registry.build("evaluator", node) for name, node in cfg.evaluator.items()}
        if not self.cfg.eval.train_data and not self.probe_data:
            raise RtlabError("eval.train_data=false leaves nothing to probe; name datasets with eval.datasets=[NAME]")
        if self.evaluators and not self.data.train.labelled and not self.probe_data:
            raise RtlabError(f"the training data '{self.data.name}' has no labels, so the probes have nothing to "
                             "predict; probe a labelled dataset with eval.datasets=[NAME] (e.g. fashion_mnist) or "
                             "drop the probes with evaluator=[]")
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:
            hazards = cpu_bf16_hazards(self.student, self.prepare(self.data.train.images[:2]))
            if hazards:
                msg = (f"train.precision=bf16 switched to fp32: strided convolutions see 1x1 maps "
                       f"({', '.join(hazards[:3])}), where torch's CPU bf16 backward returns non-finite gradients")
                log.warning(msg)
                self.summary.setdefault("warnings", []).append(msg)
                self.amp_dtype = None
        self._init_student = {k: v.detach().clone() for k, v in self.student.named_parameters()}
        self.summary["teacher_student_distance_init"] = parameter_distance(self.student, self.teacher)
        return self

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
        ``student_distance_from_init`` (no ``/``: they are not accuracies)."""
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
                feats = features(self, target, data, cache)
                for evaluator in self.evaluators.values():
                    for metric, value in evaluator.evaluate(feats, self).items():
                        results[f"{metric}/{name}"] = float(value)
                del feats
        del cache
        self.metrics.update(results)
        self.history.append({"epoch": epoch, "step": self.step, **results})
        self.hook.rtlab_evaluate_end(run=self, epoch=epoch, results=results)
        return results

    def _eval_due(self, epoch: int) -> bool:
        every = self.cfg.eval.every
        return epoch == self.epochs or (every > 0 and epoch % every == 0)

    # ------------------------------------------------------------------------------------------------- training
    def batches(self) -> Iterator[torch.Tensor]:
        """Index batches of one epoch (a fresh permutation from the data-order stream)."""
        n, bs = len(self.data.train), self.cfg.train.batch_size
        perm = torch.randperm(n, generator=self.order_gen).to(self.device)
        stop = (n // bs) * bs if self.cfg.train.drop_last else n
        for i in range(0, stop, bs):
            yield perm[i:i + bs]

    def train_step(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        images = self.data.train.images[index].float().div_(255.0)
        views = [self.prepare(v) for v in self.augment.views(images, self.aug_gen)]
        self.optimizer_factory.schedule(self.optimizer, self)
        with self.autocast():
            loss, logs = self.objective.loss(self, views, index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step = getattr(self.optimizer_factory, "step", None)
        step_logs = (step(self.optimizer, self) if step is not None else self.optimizer.step()) or {}
        self.updater.update(self)
        self.step += 1
        self._images_seen += len(index)
        return {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in {**logs, **step_logs}.items()}}

    def fit(self) -> dict[str, Any]:
        """Train and evaluate; returns the summary (also written to ``summary.json``)."""
        cfg = self.cfg
        self.hook.rtlab_run_start(run=self)
        known = [*BUILTIN_TARGETS, *self.extra_targets]
        unknown = [t for t in cfg.eval.targets if t not in known]
        if unknown:
            raise RtlabError(f"unknown eval target(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if cfg.eval.before:
            self.evaluate(0)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        done = False
        for epoch in range(self.epoch + 1, self.epochs + 1):
            t0 = time.time()
            n_batches = self.steps_per_epoch
            for i, index in enumerate(self.batches()):
                logs = self.train_step(index)
                for k, v in logs.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                last = i == n_batches - 1
                done = cfg.train.max_steps is not None and self.step >= cfg.train.max_steps
                if count and (self.step % cfg.train.log_every == 0 or last or done):
                    metrics = {k: float(v) / count for k, v in sums.items()}
                    metrics["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
                    metrics["step"] = self.step
                    metrics["epoch"] = (epoch - 1) + (i + 1) / n_batches
                    self._check_finite(metrics)
                    self.hook.rtlab_step_end(run=self, metrics=metrics)
                    sums, count = {}, 0
                if done:
                    break
            self._train_time += time.time() - t0
            self.epoch = epoch
            self.updater.epoch_end(self)
            self.hook.rtlab_epoch_end(run=self, epoch=epoch)
            if done:
                break
            if self._eval_due(epoch):
                self.evaluate(epoch)
        if not self.history or self.history[-1]["step"] != self.step:
            self.evaluate(self.epoch)
        return self.finish()

    def _check_finite(self, metrics: dict[str, float]) -> None:
        loss = metrics.get("train/loss")
        if loss is not None and not math.isfinite(loss):
            raise RtlabError(f"the loss became {loss} before step {self.step}; lower optimizer.lr or check the "
                             "data normalisation (the last good checkpoint is kept)")

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
        """Write ``checkpoints/<name>`` (safetensors + JSON, atomic) with whatever plugins add to it."""
        from framework.checkpoint import save_checkpoint

        tensors = self.state_tensors()
        meta = self.checkpoint_meta()
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
            "train_time_s": round(self._train_time, 2),
            "images_per_s": round(self._images_seen / self._train_time, 1) if self._train_time else None,
            "student_distance_from_init": moved,
            "teacher_student_distance": parameter_distance(self.student, self.teacher),
            "device": str(self.device),
            "precision": (str(self.amp_dtype).replace("torch.", "") if self.amp_dtype
                          else "fp64" if self.dtype == torch.float64 else "fp32"),
            "versions": {"rtlab": __version__, "torch": torch.__version__, "timm": _version("timm"),
                         "python": platform.python_version()},
        })
        if self.step > 0 and moved == 0.0:
            log.warning("the student did not move from its initialisation in %d steps", self.step)
            self.summary.setdefault("warnings", []).append("student did not move")
        self.hook.rtlab_summarize(run=self, summary=self.summary)
        atomic_write_text(self.out_dir / "summary.json", json.dumps(self.summary, indent=2, default=str))
        self.hook.rtlab_run_end(run=self, summary=self.summary)
        return self.summary


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
                 prepare: Callable[[Run], None] | None = None) -> dict[str, Any]:
    """Build and run one training run; on failure plugins are told and finished files stay intact.

    ``prepare(run)`` is called between setup and training: analyses that drive runs use it to change the built
    run in place (load weights, attach pruning masks, start the schedule at a later epoch).
    """
    run = Run(cfg, out_dir, pm)
    try:
        run.setup()
        if prepare is not None:
            prepare(run)
        return run.fit()
    except BaseException as exc:
        try:
            run.hook.rtlab_run_error(run=run, error=exc)
        except Exception:  # never mask the original error
            log.exception("a plugin failed while handling a run error")
        raise

