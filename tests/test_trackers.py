"""Trackers with the real libraries, offline: W&B in offline mode (its run files read back) and MLflow with a SQLite
store (read back with its client) get every record of ``metrics.jsonl`` exactly once — also when the run is killed
and resumed — plus the configuration, the summary and the plots; a sweep groups its jobs; TensorBoard's HParams
dashboard gets each run's options and final metrics."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import TINY, run_cli
from test_resume import _kill_at

TRACKED = [*TINY, "data=digits", "data.train_size=192", "data.test_size=64", "train.batch_size=16",
           "train.epochs=2", "eval.every=1", "evaluator=[knn]", "train.log_every=2", "train.state_steps=3",
           "train.threads=1", "tracker=[wandb,mlflow]"]
STEPS = 24  # 12 steps per epoch


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once: creating its tables takes MLflow ~10 s."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracker_env(tmp_path, monkeypatch, mlflow_db):
    """W&B offline with its settings in the test's folder; a copy of the empty MLflow store there too."""
    import shutil

    shutil.copy(mlflow_db, tmp_path / "mlflow.db")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _wandb_rows(run_dir: Path) -> list[dict]:
    from plugins.tracking.wandb_tracker import offline_files, offline_rows

    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    files = offline_files(run_dir / "wandb", run_id)
    assert files, f"no offline W&B run {run_id} in {run_dir / 'wandb'}"
    return [row for path in files for row in offline_rows(path)]


def _mlflow_points(run_dir: Path) -> tuple[Counter, object, object]:
    """(key, step, value) of every MLflow metric point that is a record's value, counted; the client; the run."""
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(state["tracking_uri"])
    run = client.get_run(state["run_id"])
    points: Counter = Counter()
    for key in run.data.metrics:
        if not key.startswith(("final/", "best/", "rtlab/")) and key not in ("steps", "epochs") and (
                "/" in key or key == "epoch"):
            points.update((key, m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
    return points, client, run


def _check_exactly_once(run_dir: Path) -> None:
    from plugins.tracking.mlflow_tracker import metric_name
    from plugins.tracking.trackers import tracked_values

    records = _records(run_dir)
    assert any(r["kind"] == "eval" for r in records) and any(r["kind"] == "train" for r in records)
    # W&B: one history row per record, in order (_step is the record's number), with the record's values
    rows = _wandb_rows(run_dir)
    assert [row["_step"] for row in rows] == list(range(len(records)))
    assert [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows] == \
        [{"step": r["step"], **tracked_values(r)} for r in records]
    # MLflow: every value of every record once, at the record's step
    points, _, run = _mlflow_points(run_dir)
    want = Counter((metric_name(k), r["step"], v) for r in records for k, v in tracked_values(r).items())
    assert points == want
    assert run.info.status == "FINISHED"


def test_a_killed_and_resumed_run_reaches_its_trackers_exactly_once(tmp_path, tracker_env):
    from test_resume import _start

    seed = random.randrange(1 << 30)
    kill = random.Random(seed).randrange(4, STEPS - 6)
    run_dir = tmp_path / "run"
    _kill_at(_start([*TRACKED, f"hydra.run.dir={run_dir}"]), run_dir, kill)
    first = json.loads((run_dir / "trackers.json").read_text())
    res = run_cli("train", f"resume={run_dir}", env=tracker_env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert json.loads((run_dir / "trackers.json").read_text()) == first, "the resumed run opened other runs"
    _check_exactly_once(run_dir)
    # one MLflow run for the rtlab run, holding the configuration, the final summary and the plots
    points, client, run = _mlflow_points(run_dir)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params["train.batch_size"] == "16" and run.data.params["backbone.name"] == "test_resnet"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["final/knn/student"] == summary["metrics"]["knn/student"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/knn.png", "plots/training.png"} <= artifacts, artifacts
    kinds = json.loads(Path(client.download_artifacts(run.info.run_id, "rtlab/metrics.json", str(tmp_path))
                            ).read_text())
    assert kinds["protocol"]["evaluator"]["knn"]["k"] == 20 and kinds["metric_kinds"] == {}
    # W&B: the summary of the last attempt has the final metrics; the plots are among its files
    from plugins.tracking.wandb_tracker import offline_files, offline_records

    last = offline_files(run_dir / "wandb", first["wandb"]["id"])[-1]
    summary_keys = {item.key for r in offline_records(last) if r.WhichOneof("record_type") == "summary"
                    for item in r.summary.update}
    assert "final/knn/student" in summary_keys
    assert (last.parent / "files" / "plots" / "knn.png").exists()


def test_sweep_jobs_share_a_group_and_reach_tensorboard_hparams(tmp_path, tracker_env):
    sweep = tmp_path / "sweep"
    res = run_cli("train", "-m", *TINY, "data=digits", "data.train_size=64", "data.test_size=64",
                  "train.threads=1", "evaluator=[knn]", "tracker=[wandb,mlflow]", "train.seed=0,1", f"hydra.sweep.dir={sweep}",
                  env=tracker_env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    jobs = [sweep / "0", sweep / "1"]
    from plugins.tracking.wandb_tracker import offline_files, offline_records

    groups = set()
    for job in jobs:
        _check_exactly_once(job)
        run_id = json.loads((job / "trackers.json").read_text())["wandb"]["id"]
        groups |= {r.run.run_group for path in offline_files(job / "wandb", run_id) for r in offline_records(path)
                   if r.WhichOneof("record_type") == "run"}
        _, _, run = _mlflow_points(job)
        groups.add(run.data.tags["rtlab.group"])
    assert groups == {str(sweep)}
    # TensorBoard HParams: each job's options (its own seed) and its final metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    seeds = []
    for job in jobs:
        events = EventAccumulator(str(job), size_guidance={"scalars": 0}).Reload()
        content = events.PluginTagToContent("hparams")
        start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
                     if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
        seeds.append(start.hparams["train.seed"].number_value)
        summary = json.loads((job / "summary.json").read_text())
        final = events.Scalars("final/knn/student")
        assert [e.value for e in final] == pytest.approx([summary["metrics"]["knn/student"]])
    assert seeds == [0, 1]


def test_a_tracker_that_fails_mid_run_is_recorded_and_training_goes_on(tmp_path):
    from dataclasses import dataclass

    from framework import hookimpl

    class Broken:
        def __init__(self, opts):
            self.logged = []

        def start(self, info):
            return 0

        def log(self, index, record):
            if index == 1:
                raise ConnectionError("server went away")
            self.logged.append(index)

        def finish(self, summary, files, status):
            pass

    @dataclass
    class NoOpts:
        pass

    class Plugin:
        @hookimpl
        def rtlab_register(self, registry):
            if not registry.has("tracker", "broken"):
                registry.add("tracker", "broken", Broken, NoOpts)

    from framework._config.compose import check_config, compose
    from framework._run.loop import Run
    from framework.api import create_plugin_manager
    from tiny_runs import FAST

    pm = create_plugin_manager(extra_plugins=[Plugin()], autoload=False)  # its own config store with 'broken'
    cfg = compose([*FAST, "tracker=[broken]", "train.log_every=1"], pm.registry)
    check_config(cfg, pm.registry)
    summary = Run(cfg, tmp_path, pm).setup().fit()
    assert summary["steps"] == 4
    assert any("tracker 'broken'" in e["error"] and "server went away" in e["error"] for e in summary["errors"])


def test_a_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    from framework.api import RtlabError
    from plugins.tracking.mlflow_tracker import MlflowOptions, MlflowTracker
    from plugins.tracking.trackers import TrackedRun
    from plugins.tracking.wandb_tracker import WandbOptions, WandbTracker

    info = TrackedRun("n", None, {}, {}, {}, tmp_path, False)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RtlabError, match=r"pip install 'rtlab\[wandb\]'"):
        WandbTracker(WandbOptions()).start(info)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(RtlabError, match=r"pip install 'rtlab\[mlflow\]'"):
        MlflowTracker(MlflowOptions()).start(info)
    with pytest.raises(RtlabError, match="tracker.wandb.mode must be one of online, offline, disabled"):
        WandbTracker(WandbOptions(mode="ofline"))

