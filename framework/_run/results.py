"""The results of a run: checkpoints of its weights, ``summary.json``, ``error.txt``.

:class:`RunResults` is the part of :class:`framework.api.Run` that writes what a finished (or crashed) run leaves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf

from framework import __version__
from framework._base.files import atomic_write_text
from framework._nets.checkpoint import prefixed, save_checkpoint
from framework._base.errors import RunInterrupted
from framework._run.guards import check_parameters
from framework._base.metrics import MetricKind, kind_of
from framework._nets.models import parameter_distance, resolved_backbone_options

log = logging.getLogger("rtlab")


class RunResults:
    """Checkpoints, the summary and the crash record (a part of :class:`framework.api.Run`)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Student and teacher weights (and buffers) for a checkpoint."""
        return {**prefixed(self.student.state_dict(), "student."), **prefixed(self.teacher.state_dict(), "teacher.")}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "rtlab_version": __version__,
            "step": self.step,
            "epoch": self.epoch,
            # resolved (stem, patch size): network_from_checkpoint rebuilds exactly this architecture
            "backbone": dataclasses.asdict(resolved_backbone_options(self.registry, self.cfg.backbone,
                                                                     self.data.size)),
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
            "best": _best(self.history, self.metric_kinds),
            "steps": self.step,
            "epochs": self.epoch,
            "sample_budget": self.cfg.train.sample_budget,
            "train_images": len(self.data.train),
            "test_images": len(self.data.test),
            "data_storage": self.data.extra.get("storage", "device"),
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
        if not self.claimed or not self.is_main or isinstance(exc, RunInterrupted):  # nothing went wrong
            return
        text = "".join(traceback.format_exception(exc))
        try:
            atomic_write_text(self.out_dir / "error.txt", f"step {self.step}, epoch {self.epoch}\n{text}")
        except OSError:
            pass

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release(discard=not self.claimed)


def _best(history: list[dict[str, Any]], kinds: Mapping[str, MetricKind]) -> dict[str, float]:
    """Best value over evaluations (epoch ≥ 1) of every student metric (the paper's max-over-epochs; the min of a
    lower-is-better number), for the training data (``linear/student``) and every probe dataset
    (``linear/student@cifar100``)."""
    best: dict[str, float] = {}
    for row in history:
        if row["epoch"] < 1:
            continue
        for k, v in row.items():
            if "/" in k and k.split("/", 1)[1].split("@", 1)[0].split(".", 1)[0] == "student" and isinstance(v, float):
                best[k] = kind_of(k, kinds).better(best[k], v) if k in best else v
    return best


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return ""
