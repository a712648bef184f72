"""What a run yields: its evaluation history, the latest metrics, the summary, and the checkpoints of its weights.

:class:`Results` is the run's record. The loop adds evaluations to it, plugins add summary entries
(``run.summary``), and at the end :meth:`Results.finish` completes and writes ``summary.json``; a failing optional
part (an evaluator, a plugin after training) is recorded with :meth:`Results.record_error` and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from omegaconf import OmegaConf

from framework import __version__
from framework._base import paths
from framework._base.errors import PluginError, RtlabError
from framework._base.files import atomic_write_text
from framework._base.keys import parse_key
from framework._base.metrics import MetricKind, kind_of
from framework._nets.checkpoint import prefixed, save_checkpoint
from framework._nets.models import parameter_distance, resolved_backbone_options

if TYPE_CHECKING:
    from framework._run.internals import RunInternals as Run

log = logging.getLogger("rtlab")


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}  # the latest evaluation's flat results
        self.history: list[dict[str, Any]] = []  # every evaluation with its epoch and step
        self.summary: dict[str, Any] = {}  # what summary.json will hold
        self.metric_kinds: dict[str, MetricKind] = {}  # declared by the evaluators, by metric name
        self.started = time.time()
        self.train_time = 0.0
        self.images_seen = 0

    # ------------------------------------------------------------------------------------------ evaluations
    def add_evaluation(self, epoch: int, step: int, results: Mapping[str, float]) -> None:
        self.metrics.update(results)
        self.history.append({"epoch": epoch, "step": step, **results})

    def evaluated_at(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == step

    def record_error(self, where: str, exc: BaseException, step: int) -> None:
        """Note a failed optional part (evaluator, analysis, a plugin after training) in the summary and the log."""
        if isinstance(exc, (PluginError, RtlabError)) and where.startswith("rtlab_"):
            message = str(exc)
        else:
            detail = " ".join(str(exc).split())[:300]
            message = f"{where} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")
        log.error("%s", message)
        log.debug("%s", "".join(traceback.format_exception(exc)))
        self.summary.setdefault("errors", []).append({"step": step, "error": message})

    def warn(self, message: str) -> None:
        """A warning for the log and ``summary.json`` (``warnings``)."""
        log.warning("%s", message)
        self.summary.setdefault("warnings", []).append(message)

    # ---------------------------------------------------------------------------------------------- weights
    @staticmethod
    def checkpoint_meta(run: "Run") -> dict[str, Any]:
        """What every checkpoint records besides its tensors: enough to rebuild the networks elsewhere."""
        data = run.data
        return {
            "rtlab_version": __version__,
            **run.clock.state(),
            # resolved (stem, patch size): network_from_checkpoint rebuilds exactly this architecture
            "backbone": dataclasses.asdict(resolved_backbone_options(run.registry, run.cfg.backbone, data.size)),
            "head": OmegaConf.to_container(run.cfg.head, resolve=True),
            "data": {"name": data.name, "channels": data.channels, "size": list(data.size),
                     "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)},
            "metrics": dict(run.metrics),
        }

    def save_checkpoint(self, run: "Run", name: str) -> Path:
        """``checkpoints/<name>`` (student and teacher, safetensors + JSON, atomic) with what plugins add (rank 0)."""
        base = paths.checkpoint(run.out_dir, name)
        if not run.is_main:
            return base.with_suffix(".json")
        run.guard.check_networks(run, include_frozen=True)
        tensors = {**prefixed(run.student.state_dict(), "student."), **prefixed(run.teacher.state_dict(), "teacher.")}
        meta = {**self.checkpoint_meta(run), "kind": "weights"}
        run.hook.rtlab_checkpoint_save(run=run, tensors=tensors, meta=meta)
        return save_checkpoint(base, tensors, meta)

    # -------------------------------------------------------------------------------------------- the end
    def finish(self, run: "Run") -> dict[str, Any]:
        """Complete the summary, let plugins add to it, write ``summary.json``, then tell plugins the run ended."""
        moved = parameter_distance(run.student, run.init_student)
        self.summary.update({
            "name": run.cfg.name,
            "metrics": dict(self.metrics),
            "best": best(self.history, self.metric_kinds),
            "steps": run.clock.step,
            "epochs": run.clock.epoch,
            "sample_budget": run.cfg.train.sample_budget,
            "train_images": len(run.data.train),
            "test_images": len(run.data.test),
            "data_storage": run.data.extra.get("storage", "device"),
            "wall_time_s": round(time.time() - self.started, 2),
            "train_time_s": round(self.train_time, 2),
            "images_per_s": round(self.images_seen / self.train_time, 1) if self.train_time else None,
            "student_distance_from_init": moved,
            "teacher_student_distance": parameter_distance(run.student, run.teacher),
            "device": str(run.device),
            "precision": (str(run.amp_dtype).replace("torch.", "") if run.amp_dtype
                          else "fp64" if run.dtype == torch.float64 else "fp32"),
            "world_size": run.world_size,
            "versions": {"rtlab": __version__, "torch": torch.__version__, "timm": _version("timm"),
                         "python": platform.python_version()},
        })
        if run.clock.step > 0 and moved == 0.0:
            log.warning("the student did not move from its initialisation in %d steps", run.clock.step)
            self.summary.setdefault("warnings", []).append("student did not move")
        for exc in run.call_each("rtlab_summarize", run=run, summary=self.summary):
            self.record_error("rtlab_summarize", exc, run.clock.step)
        self.write_summary(run)
        errors = run.call_each("rtlab_run_end", run=run, summary=self.summary)
        for exc in errors:
            self.record_error("rtlab_run_end", exc, run.clock.step)
        if errors:
            self.write_summary(run)
        return self.summary

    def write_summary(self, run: "Run") -> None:
        if run.is_main:
            atomic_write_text(paths.summary(run.out_dir), json.dumps(self.summary, indent=2, default=str))

    # ------------------------------------------------------------------------------------- training state
    def state(self) -> dict[str, Any]:
        return {"history": self.history, "metrics": self.metrics,
                "summary": json.loads(json.dumps(self.summary, default=str)),  # as summary.json would hold it
                "counters": {"train_time": self.train_time, "images_seen": self.images_seen}}

    def load(self, meta: Mapping[str, Any]) -> None:
        self.history, self.metrics, self.summary = list(meta["history"]), dict(meta["metrics"]), dict(meta["summary"])
        self.train_time = float(meta["counters"]["train_time"])
        self.images_seen = int(meta["counters"]["images_seen"])


def best(history: list[dict[str, Any]], kinds: Mapping[str, MetricKind]) -> dict[str, float]:
    """Best value over evaluations (epoch ≥ 1) of every student metric (the paper's max-over-epochs; the min of a
    lower-is-better number), for the training data (``linear/student``), every layer and every probe dataset."""
    out: dict[str, float] = {}
    for row in history:
        if row["epoch"] < 1:
            continue
        for k, v in row.items():
            key = parse_key(k)
            if key is not None and key.target == "student" and isinstance(v, float):
                out[k] = kind_of(k, kinds).better(out[k], v) if k in out else v
    return out


def _version(dist: str) -> str:
    try:
        return version(dist)
    except Exception:
        return ""
