"""``metrics.jsonl``: one JSON object per logged training step and per evaluation, appended and flushed."""

from __future__ import annotations

import json
import time

from framework import hookimpl

_files: dict[int, object] = {}


def _write(run, record: dict) -> None:
    f = _files.get(id(run))
    if f is None:
        f = open(run.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        _files[id(run)] = f
    record = {"time": round(time.time(), 3), **record}
    f.write(json.dumps(record) + "\n")  # type: ignore[attr-defined]
    f.flush()  # type: ignore[attr-defined]


@hookimpl
def rtlab_step_end(run, metrics):
    _write(run, {"kind": "train", **metrics})


@hookimpl
def rtlab_evaluate_end(run, epoch, results):
    _write(run, {"kind": "eval", "epoch": epoch, "step": run.step, **results})


def _close(run) -> None:
    f = _files.pop(id(run), None)
    if f is not None:
        f.close()  # type: ignore[attr-defined]


@hookimpl
def rtlab_run_end(run, summary):
    _close(run)


@hookimpl
def rtlab_run_error(run, error):
    _close(run)
