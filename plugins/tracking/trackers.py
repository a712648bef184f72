"""Experiment trackers beside TensorBoard: ``tracker=wandb``, ``tracker=mlflow``, several at once
(``tracker=[wandb,mlflow]``); docs/tracking.md.

This plugin declares the component kind ``tracker`` (config group ``tracker``, a list like ``evaluator``) and
drives the selected trackers from the life-cycle hooks. A tracker component only translates; what is logged and
when is decided here, once for every backend:

* at the start: the resolved configuration, the metric kinds (accuracy or number, which direction is better) and
  the probe protocol (the evaluators' settings and ``eval.*``), the sweep the run belongs to (its group);
* every record of ``metrics.jsonl``, in order, as it is written: training records under their own names
  (``train/loss``, ``epoch``), evaluation records under ``eval/`` (``eval/knn/student``, ``eval/epoch``), each at
  its optimiser step (``step``);
* at the end: the final and best metrics (``final/…``, ``best/…``), ``summary.json`` and the run's plots.

**Exactly once, across kills and resumes.** Records are numbered by their position in ``metrics.jsonl``; every
training state stores how many were written. A tracker's ``start`` reopens the same tracked run (its id is kept in
``RUN/trackers.json``) and answers how many records that run already holds (*held*). The records the resumed run
has on disk beyond that are sent again from ``metrics.jsonl`` (a tracker that fell behind, or one added on
resume, is filled in), and live records whose number is below *held* are not sent again: the steps a resumed run
replays were logged by the killed attempt (on the CPU, and on GPUs with ``train.deterministic=true``, with the
same values). So the tracked run holds every record of ``metrics.jsonl`` once, with no gap.

A tracker that fails while the run trains is recorded in ``summary.json`` (``errors``) and left out for the rest
of the attempt; training goes on, and resuming the run fills in what it missed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from framework.api import RtlabError, atomic_write_text, hookimpl, paths
from plugins.tracking.metrics_log import eval_record, train_record

log = logging.getLogger("rtlab")

KIND = "tracker"
STATE_FILE = "trackers.json"
FINISHED, FAILED, INTERRUPTED = "finished", "failed", "interrupted"


def declare_kind(registry) -> None:
    """Declare the ``tracker`` kind (idempotent: every tracker plugin may call it)."""
    registry.add_kind(KIND, "an experiment tracker the run logs to beside TensorBoard (W&B, MLflow, …); several "
                      "can be selected", group=KIND, multi=True)


@dataclass
class TrackedRun:
    """What a tracker is told about the run it tracks."""

    name: str  # display name: "<cfg.name>/<run folder>" (a sweep job: "<cfg.name>/<its overrides>")
    group: str | None  # the sweep the run is a job of (its folder), None for a single run
    config: dict[str, Any]  # the resolved configuration, nested
    metric_kinds: dict[str, dict[str, bool]]  # metric name -> {"accuracy": …, "higher_is_better": …}
    protocol: dict[str, Any]  # the probe protocol: {"evaluator": …, "eval": …}
    out_dir: Path  # the run folder
    resumed: bool  # the run continues a saved training state
    state: dict[str, Any] = field(default_factory=dict)  # the tracker's own (run id, …): kept in trackers.json

    def flat_config(self) -> dict[str, Any]:
        """The configuration as ``{"train.lr": 0.001, …}`` (lists and None as text), for parameter tables."""
        return flatten(self.config)


class Tracker(Protocol):
    """Kind ``tracker``: ``factory(options)`` returns one; the plugin ``trackers`` calls it."""

    def start(self, run: TrackedRun) -> int:
        """Open the tracked run — or reopen the one ``run.state`` names (a resumed run) — and log the config, metric
        kinds and protocol. Returns how many records the tracked run already holds (0 for a new one)."""

    def log(self, index: int, record: dict[str, Any]) -> None:
        """Record number ``index`` of ``metrics.jsonl``: ``{"kind": "train" | "eval", "step": …, "time": …,
        <name>: value, …}``; :func:`tracked_values` gives its names as trackers show them."""

    def finish(self, summary: dict[str, Any] | None, files: list[Path], status: str) -> None:
        """The run ended (``status``: finished, failed or interrupted): log ``summary`` (None when the run did not
        finish) with :func:`summary_values`, upload ``files`` (``summary.json``, plots), close the tracked run."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; leaves that are not numbers, strings or booleans become text."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not tree and prefix:
            out[prefix.rstrip(".")] = "{}"
        return out
    out[prefix.rstrip(".")] = tree if isinstance(tree, (bool, int, float, str)) else json.dumps(tree, default=str)
    return out


def tracked_values(record: dict[str, Any]) -> dict[str, float]:
    """The values of a ``metrics.jsonl`` record under the names trackers log them: a training record's as they
    are (``train/loss``, ``epoch``), an evaluation's under ``eval/`` (``eval/knn/student``, ``eval/epoch``); the
    step is the record's ``step``, not a value."""
    prefix = "eval/" if record.get("kind") == "eval" else ""
    return {f"{prefix}{k}": float(v) for k, v in record.items() if k not in ("kind", "time", "step") and _number(v)}


def summary_values(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``summary.json`` a tracker shows as the run's summary: ``final/<metric>`` (the final
    evaluation), ``best/<metric>`` (the best student value over the epochs) and the run's scalars (``steps``,
    ``wall_time_s``, ``images_per_s``, …)."""
    out = final_values(summary)
    out.update({f"best/{k}": float(v) for k, v in (summary.get("best") or {}).items() if _number(v)})
    out.update({k: float(v) for k, v in summary.items() if _number(v)})
    return out


def final_values(summary: dict[str, Any]) -> dict[str, float]:
    """``final/<metric>``: the numbers of the final evaluation in ``summary.json``."""
    return {f"final/{k}": float(v) for k, v in (summary.get("metrics") or {}).items() if _number(v)}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sweep_of(run) -> tuple[str | None, str | None]:
    """(group, job label) of a Hydra multirun job: its sweep folder and its overrides; (None, None) otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None, None
        folder = Path(str(hc.sweep.dir))
        try:
            folder = folder.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
        return str(folder), (str(hc.job.override_dirname) or None)
    except Exception:  # no Hydra job (in-process runs, tests): a single run
        return None, None


def read_records(out_dir: Path, start: int, stop: int) -> list[dict[str, Any]]:
    """Records ``start`` … ``stop - 1`` of the run's ``metrics.jsonl``."""
    path = paths.metrics(out_dir)
    out: list[dict[str, Any]] = []
    if stop <= start or not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= stop:
                break
            if i >= start:
                out.append(json.loads(line))
    return out


def _load_state(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class _Session:
    """The selected trackers of one live run and the number of records written so far."""

    def __init__(self, records: int) -> None:
        self.records = records
        self.trackers: dict[str, Tracker] = {}
        self.held: dict[str, int] = {}

    def send(self, run, index: int, record: dict[str, Any]) -> None:
        for name in list(self.trackers):
            if index < self.held[name]:
                continue  # the tracked run holds it already (logged by the attempt this run resumes)
            try:
                self.trackers[name].log(index, record)
            except Exception as exc:
                self.drop(run, name, exc)

    def drop(self, run, name: str, exc: BaseException) -> None:
        """A tracker that failed mid-run: recorded, left out for the rest of this attempt; training goes on."""
        self.trackers.pop(name, None)
        log.warning(f"tracker {name} failed and is left out for the rest of this attempt (resume the run to fill in "
                    f"what it missed): {exc}")
        run.record_error(f"tracker '{name}'", exc)


_sessions: dict[int, _Session] = {}
_restored: dict[int, int] = {}  # records written when the restored training state was saved, by run


def _session(run) -> _Session:
    session = _sessions.get(id(run))
    if session is None:
        session = _sessions[id(run)] = _Session(_restored.pop(id(run), 0))
    return session


@hookimpl
def rtlab_register(registry):
    declare_kind(registry)


@hookimpl
def rtlab_checkpoint_save(run, tensors, meta):
    if meta.get("kind") == "train_state":
        meta["trackers"] = {"records": _session(run).records}


@hookimpl
def rtlab_checkpoint_load(run, tensors, meta):
    saved = meta.get("trackers")
    if saved is not None:
        _restored[id(run)] = int(saved["records"])


@hookimpl
def rtlab_run_start(run):
    if run.resume and run.resumed_step is None:  # resumed before any training state: metrics.jsonl starts over
        _restored.pop(id(run), None)
    session = _session(run)
    selected = dict(run.cfg.get(KIND) or {})
    if not selected:
        return
    group, job = sweep_of(run)
    states = _load_state(run.out_dir)
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(run.cfg, resolve=True)
    info_base = dict(
        name=f"{run.cfg.name}/{job or run.out_dir.name}", group=group, config=config,
        metric_kinds={name: asdict(kind) for name, kind in run.metric_kinds.items()},
        protocol={"evaluator": config.get("evaluator"), "eval": config.get("eval")},
        out_dir=run.out_dir, resumed=bool(run.resume))
    for name, node in selected.items():
        tracker = run.registry.build(KIND, node)
        info = TrackedRun(**info_base, state=dict(states.get(name) or {}))
        held = int(tracker.start(info))
        states[name] = info.state
        atomic_write_text(run.out_dir / STATE_FILE, json.dumps(states, indent=2))
        session.trackers[name], session.held[name] = tracker, held
        missing = read_records(run.out_dir, held, session.records)
        if held < session.records and len(missing) < session.records - held:
            log.warning("tracker %s holds %d records and metrics.jsonl only %d of the %d written: the rest cannot "
                        "be sent again", name, held, held + len(missing), session.records)
        for i, record in enumerate(missing, start=held):  # what the tracked run missed (a kill, an outage)
            tracker.log(i, record)
        session.held[name] = max(held, session.records)


def _record(run, record: dict[str, Any]) -> None:
    session = _session(run)
    index = session.records
    session.records += 1
    if session.trackers:
        session.send(run, index, {"time": round(time.time(), 3), **record})


@hookimpl
def rtlab_step_end(run, metrics):
    _record(run, train_record(metrics))


@hookimpl
def rtlab_evaluate_end(run, epoch, results):
    _record(run, eval_record(run, epoch, results))


def _plots(run) -> list[Path]:
    """The run's plots (``rtlab report``'s, without the embedding panel), drawn for the trackers."""
    from plugins.commands.report import report_run

    report_run(run.out_dir)
    return sorted(paths.plots(run.out_dir).glob("*.png"))


def _finish(run, summary: dict[str, Any] | None, status: str) -> None:
    session = _sessions.pop(id(run), None)
    _restored.pop(id(run), None)
    if session is None or not session.trackers:
        return
    files: list[Path] = []
    if summary is not None:
        files.append(paths.summary(run.out_dir))
        try:
            files += _plots(run)
        except Exception as exc:  # the numbers still go out
            run.record_error("tracker plots", exc)
    errors = []
    for name, tracker in session.trackers.items():
        try:
            tracker.finish(summary, [f for f in files if f.exists()], status)
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    if errors:
        raise RtlabError(f"tracker(s) failed to finish their runs ({'; '.join(errors)})")


@hookimpl
def rtlab_run_end(run, summary):
    _finish(run, summary, FINISHED)


@hookimpl
def rtlab_run_error(run, error):
    from framework.api import RunInterrupted

    interrupted = isinstance(error, (KeyboardInterrupt, RunInterrupted))
    _finish(run, None, INTERRUPTED if interrupted else FAILED)
