"""``tracker=mlflow``: the run in MLflow (``pip install 'rtlab[mlflow]'``); docs/tracking.md.

One MLflow run per rtlab run, in the experiment named after the run (``cfg.name``) unless set; a resumed rtlab
run reopens the same MLflow run (its id is kept in ``RUN/trackers.json``). Parameters are the flattened
configuration; ``rtlab/metrics.json`` (an artifact) holds the metric kinds and the probe protocol. Each record of
``metrics.jsonl`` is one ``log_batch`` at its optimiser step, together with ``rtlab/record`` (the record's
number): MLflow's stores write a batch's metrics in one transaction, so a resumed run reads back how many records
the MLflow run holds. Names MLflow does not accept are rewritten (``@`` → ``_at_``: ``eval/knn/student_at_cifar100``).
Sweep jobs carry the tag ``rtlab.group`` (the sweep folder), to group by in MLflow's run table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from framework.api import RtlabError, hookimpl, paths
from plugins.tracking.trackers import FINISHED, INTERRUPTED, KIND, declare_kind, summary_values, tracked_values

RECORD = "rtlab/record"  # the number of the metrics.jsonl record a batch holds
STATUS = {FINISHED: "FINISHED", INTERRUPTED: "KILLED"}


@dataclass
class MlflowOptions:
    tracking_uri: Optional[str] = None  # None: MLFLOW_TRACKING_URI, else MLflow's default (in the working folder)
    experiment: Optional[str] = None  # None: MLFLOW_EXPERIMENT_NAME, else the run's name (cfg.name)
    # where a new experiment keeps its artifacts; None: the server's default, or beside the database for a
    # sqlite:/// tracking URI (<its folder>/mlartifacts)
    artifact_location: Optional[str] = None
    group: Optional[str] = None  # tag rtlab.group; None: the sweep folder of a multirun job
    tags: Dict[str, str] = field(default_factory=dict)


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts it (alphanumerics, ``_ - . / :`` and spaces): ``@`` becomes ``_at_``."""
    return re.sub(r"[^\w.\-/: ]", "_", name.replace("@", "_at_"))


def _import_mlflow():
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RtlabError("tracker=mlflow needs the mlflow package; install it with pip install 'rtlab[mlflow]' "
                         "(or pip install mlflow)") from None
    return MlflowClient


class MlflowTracker:
    """The rtlab run as an MLflow run."""

    def __init__(self, opts: MlflowOptions) -> None:
        self.opts = opts
        self.client: Any = None
        self.run_id: str | None = None
        self.last_step = 0

    def _experiment(self, name: str, uri: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = self.opts.artifact_location
        if location is None and uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start(self, info) -> int:
        MlflowClient = _import_mlflow()
        from mlflow.entities import Param, RunStatus

        uri = self.opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        try:
            self.client = MlflowClient(tracking_uri=uri)
            uri = self.client.tracking_uri
            run = None
            if info.state.get("run_id"):
                try:
                    run = self.client.get_run(info.state["run_id"])
                except Exception:  # deleted or another server: a new MLflow run, filled from metrics.jsonl
                    run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                history = self.client.get_metric_history(self.run_id, RECORD)
                return 1 + max((int(m.value) for m in history), default=-1)
            experiment = self._experiment(self.opts.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                          or str(info.config.get("name", "rtlab")), uri)
            group = self.opts.group or info.group
            tags = {**({"rtlab.group": group} if group else {}), "rtlab.run_dir": str(info.out_dir),
                    **self.opts.tags}
            self.run_id = self.client.create_run(experiment, tags=tags, run_name=info.name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in info.flat_config().items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_dict(self.run_id, {"metric_kinds": info.metric_kinds, "protocol": info.protocol},
                                 "rtlab/metrics.json")
        except RtlabError:
            raise
        except Exception as exc:
            raise RtlabError(f"tracker=mlflow could not start its run at {uri or 'the default tracking URI'} "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); check "
                             "tracker.mlflow.tracking_uri") from None
        info.state.update({"run_id": self.run_id, "tracking_uri": uri})
        return 0

    def log(self, index: int, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, ms = int(record["step"]), int(float(record["time"]) * 1000)
        metrics = [Metric(metric_name(k), v, ms, step) for k, v in tracked_values(record).items()]
        self.client.log_batch(self.run_id, metrics=[*metrics, Metric(RECORD, float(index), ms, step)])
        self.last_step = step

    def finish(self, summary, files: list[Path], status: str) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        if summary is not None:
            import time

            ms, step = int(time.time() * 1000), int(summary.get("steps", self.last_step) or 0)
            metrics = [Metric(metric_name(k), v, ms, step) for k, v in summary_values(summary).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        for path in files:
            self.client.log_artifact(self.run_id, str(path), paths.PLOTS if path.parent.name == paths.PLOTS else None)
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
        self.run_id = None


@hookimpl
def rtlab_register(registry):
    declare_kind(registry)
    registry.add(KIND, "mlflow", MlflowTracker, MlflowOptions)
