"""``metrics.jsonl``: one JSON object per logged training step and per evaluation, appended and flushed. An
evaluation's object holds its results and ``protocols``: how each of its metrics was measured (by metric name).

A resumed run continues the file where its training state was saved: every training state records the file's
length, and records written after it (by the attempt that crashed) are cut off before the run goes on, so the
file of a resumed run equals that of an uninterrupted one (up to the ``time`` fields).
"""

from __future__ import annotations

import json
import os
import time

from framework.api import hookimpl, metric_of, paths
from plugins.tracking.per_run import PerRun


def _path(run):
    return paths.metrics(run.out_dir)


_files = PerRun(lambda run: open(_path(run), "a", encoding="utf-8"), lambda f: f.close())


def _write(run, record: dict) -> None:
    f = _files.get(run)
    f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
    f.flush()


def _truncate(run, size: int) -> None:
    path = _path(run)
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())


@hookimpl
def rtlab_run_start(run):
    if run.resume and run.resumed_step is None:  # resumed before any training state: start the file over
        _truncate(run, 0)


@hookimpl
def rtlab_checkpoint_save(run, tensors, meta):
    if meta.get("kind") == "train_state":  # every record is flushed as it is written
        meta["metrics_log"] = {"bytes": _path(run).stat().st_size if _path(run).exists() else 0}


@hookimpl
def rtlab_checkpoint_load(run, tensors, meta):
    saved = meta.get("metrics_log")
    if saved is not None:
        _truncate(run, int(saved["bytes"]))


def train_record(metrics: dict) -> dict:
    """The ``metrics.jsonl`` record of a logged training step (without its ``time``)."""
    return {"kind": "train", **metrics}


def eval_record(run, epoch: int, results: dict) -> dict:
    """The ``metrics.jsonl`` record of an evaluation (without its ``time``), with how each of its metrics was
    measured (by metric name; the row's epoch is the evaluation's)."""
    measured = {metric_of(k) for k in results if "/" in k}
    protocols = {m: p for m, p in run.summary.get("metric_protocols", {}).items() if m in measured}
    return {"kind": "eval", "epoch": epoch, "step": run.step, **results, "protocols": protocols}


@hookimpl
def rtlab_step_end(run, metrics):
    _write(run, train_record(metrics))


@hookimpl
def rtlab_evaluate_end(run, epoch, results):
    _write(run, eval_record(run, epoch, results))


@hookimpl
def rtlab_run_end(run, summary):
    _files.close(run)


@hookimpl
def rtlab_run_error(run, error):
    _files.close(run)
