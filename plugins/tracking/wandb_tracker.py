"""``tracker=wandb``: the run in Weights & Biases (``pip install 'rtlab[wandb]'``); docs/tracking.md.

One W&B run per rtlab run, resumed under the same id (``RUN/trackers.json``) when the rtlab run is resumed. Each
record of ``metrics.jsonl`` is one history row whose ``_step`` is the record's number, so the tracked run knows
how many records it holds; charts use the optimiser step (``step``) as their x-axis. Evaluation metrics get a
``max`` (accuracies, higher-is-better numbers) or ``min`` summary from their kind. Sweep jobs share a group.

Offline (``tracker.wandb.mode=offline`` or ``WANDB_MODE=offline``) each attempt of a run writes its own folder
``RUN/wandb/offline-run-*-<id>/``; a resumed attempt reads the earlier ones back (:func:`offline_rows`) to know
what the run holds. ``wandb sync RUN/wandb/offline-run-*`` uploads them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional

from framework.api import RtlabError, hookimpl, paths
from plugins.tracking.trackers import FINISHED, INTERRUPTED, KIND, declare_kind, summary_values, tracked_values

MODES = ("online", "offline", "disabled")


@dataclass
class WandbOptions:
    project: Optional[str] = None  # W&B project; None: WANDB_PROJECT, else the run's name (cfg.name)
    entity: Optional[str] = None  # team or user; None: WANDB_ENTITY, else your default entity
    mode: Optional[str] = None  # online | offline | disabled; None: WANDB_MODE, else online
    group: Optional[str] = None  # None: the sweep folder of a multirun job (no group for a single run)
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None  # where W&B writes its files; None: the run folder (RUN/wandb/)


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise RtlabError("tracker=wandb needs the wandb package; install it with pip install 'rtlab[wandb]' (or "
                         "pip install wandb)") from None
    return wandb


# ----------------------------------------------------------------------------------------- offline run files
_BLOCK, _HEADER = 32768, 7  # W&B's transaction log: leveldb-style blocks of records behind a 7-byte header


def _chunks(path: Path) -> Iterator[bytes]:
    """The records of one ``.wandb`` file (a torn end, as a killed process leaves it, ends the scan)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the rest of a block too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        if (length == 0 and kind == 0) or pos + length > len(data):
            return
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:  # a whole record
            yield chunk
        elif kind == 2:  # first, middle and last pieces of a record spanning blocks
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def offline_records(path: Path) -> Iterator[Any]:
    """The records (``wandb_internal_pb2.Record``: run, config, history, summary, files, …) of an offline run
    file (``run-<id>.wandb``), as far as it is complete."""
    from wandb.proto import wandb_internal_pb2 as pb

    for chunk in _chunks(Path(path)):
        record = pb.Record()
        try:
            record.ParseFromString(chunk)
        except Exception:
            return
        yield record


def offline_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The history rows of an offline run file, each ``{"_step": …, name: value, …}``."""
    for record in offline_records(path):
        if record.WhichOneof("record_type") == "history":
            yield {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}


def offline_files(root: Path, run_id: str) -> list[Path]:
    """Every attempt's offline file of run ``run_id`` under ``root`` (the ``wandb`` folder), oldest first."""
    return sorted(Path(root).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def new_run_id() -> str:
    """A fresh W&B run id (8 characters of [a-z0-9], as W&B makes them)."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbTracker:
    """The rtlab run as a W&B run."""

    def __init__(self, opts: WandbOptions) -> None:
        if opts.mode is not None and opts.mode not in MODES:
            raise RtlabError(f"tracker.wandb.mode must be one of {', '.join(MODES)} (or null), got '{opts.mode}'")
        self.opts = opts
        self.run: Any = None
        self.defined: set[str] = set()
        self.kinds: dict[str, dict[str, bool]] = {}

    def start(self, info) -> int:
        wandb = _import_wandb()
        import os

        run_id = info.state.get("id") or new_run_id()
        root = Path(self.opts.dir) if self.opts.dir else info.out_dir
        root.mkdir(parents=True, exist_ok=True)
        earlier = offline_files(root / "wandb", run_id)
        project = self.opts.project or os.environ.get("WANDB_PROJECT") or info.config.get("name", "rtlab")
        try:
            self.run = wandb.init(
                project=project, entity=self.opts.entity, id=run_id, resume="allow", dir=str(root),
                name=info.name, group=self.opts.group or info.group, tags=list(self.opts.tags) or None,
                mode=self.opts.mode, job_type="train",
                config={**info.config, "rtlab": {"metric_kinds": info.metric_kinds, "protocol": info.protocol}})
        except Exception as exc:
            raise RtlabError(f"tracker=wandb could not start its run ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); log in with 'wandb login', or set "
                             "tracker.wandb.mode=offline") from None
        info.state.update({"id": run_id, "project": project, "entity": self.opts.entity})
        self.kinds = info.metric_kinds
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        held = int(getattr(self.run, "starting_step", 0) or 0)
        for path in earlier:  # offline: what the earlier attempts wrote
            held = max([held, *(int(row["_step"]) + 1 for row in offline_rows(path) if "_step" in row)])
        return held

    def _define(self, name: str) -> None:
        """A new evaluation metric: its summary follows its kind (max of an accuracy, min of a lower-is-better)."""
        metric = name[len("eval/"):].split("/", 1)[0]
        if metric in self.defined or not name.startswith("eval/") or "/" not in name[len("eval/"):]:
            return
        kind = self.kinds.get(metric, {"higher_is_better": True})
        self.run.define_metric(f"eval/{metric}/*", step_metric="step",
                               summary="max" if kind.get("higher_is_better", True) else "min")
        self.defined.add(metric)

    def log(self, index: int, record: dict[str, Any]) -> None:
        values = tracked_values(record)
        for name in values:
            self._define(name)
        self.run.log({"step": record["step"], **values}, step=index)

    def finish(self, summary, files: list[Path], status: str) -> None:
        if self.run is None:
            return
        if summary is not None:
            self.run.summary.update(summary_values(summary))
        for path in files:
            self.run.save(str(path), base_path=str(path.parent.parent if path.parent.name == paths.PLOTS
                                                   else path.parent), policy="now")
        if status == INTERRUPTED:
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status == FINISHED else 1)
        self.run = None


@hookimpl
def rtlab_register(registry):
    declare_kind(registry)
    registry.add(KIND, "wandb", WandbTracker, WandbOptions)
