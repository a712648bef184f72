"""Guards against silent failure: divergence, collapse, failing plugins and evaluators, run-folder locks, and the
state protocol that lets stateful components resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from framework import hookimpl
from framework.cli.main import main
from framework._config.compose import compose
from framework._contract.plugin_manager import create_plugin_manager, get_plugin_manager, set_plugin_manager
from framework._run.loop import run_training

FAST = [*TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]",
        "tensorboard.enabled=false", "train.threads=1"]  # one thread: immune to other processes on the cores


@pytest.fixture
def with_plugin():
    """Install extra plugins (name → object) into the process-wide manager the CLI uses."""
    before = get_plugin_manager()

    def install(**plugins):
        pm = create_plugin_manager(autoload=False)
        for name, plugin in plugins.items():
            pm.register(plugin, name=name)
        set_plugin_manager(pm)
        return pm

    yield install
    set_plugin_manager(before)


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("rtlab: error: ")]


# ------------------------------------------------------------------------------------------------- divergence
def test_divergence_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, capsys):
    from framework._nets.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    code = main(["train", *FAST, "optimizer.lr=1e30", "train.state_steps=1", "train.log_every=5",
                 f"hydra.run.dir={run_dir}"])
    lines = _errors(capsys.readouterr().err)
    assert code == 3 and len(lines) == 1, lines
    assert "training diverged: the loss became nan at step 2" in lines[0]
    assert "the last good state checkpoints/last (step 1) is kept" in lines[0]
    assert "lower optimizer.lr" in lines[0]
    tensors, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    assert meta["step"] == 1 and all(bool(torch.isfinite(t).all()) for t in tensors.values()
                                     if t.is_floating_point())
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoints" / "final.json").exists()
    assert "TrainingDiverged" in (run_dir / "error.txt").read_text()


# --------------------------------------------------------------------------------------------------- collapse
@dataclass
class AlignOptions:
    pass


class AlignEmbeddings:
    """Pulls every L2-normalised student embedding towards the batch's mean direction: a collapsing objective."""

    def __init__(self, opts):
        self.opts = opts

    def setup(self, run):
        return []

    def loss(self, run, views, index):
        return F.normalize(run.student.embed(views[0]), dim=1).var(0).sum(), {}


class CollapsePlugin:
    @hookimpl
    def rtlab_register(self, registry):
        registry.add("objective", "align_embeddings", AlignEmbeddings, AlignOptions)


def test_collapse_is_warned_in_log_and_summary(tmp_path, caplog):
    pm = create_plugin_manager(autoload=False)
    pm.register(CollapsePlugin(), name="collapse_test")
    cfg = compose([*FAST, "objective=align_embeddings", "optimizer.lr=0.1", "train.epochs=4", "eval.every=1"],
                  pm.registry)
    summary = run_training(cfg, tmp_path / "run", pm)
    spread = summary["student_spread"]
    assert spread["initial"] > 0.1 and spread["min"] < 0.02 * spread["initial"], spread
    warnings = [w for w in summary["warnings"] if w.startswith("representation collapse")]
    assert len(warnings) == 1 and warnings[0] in caplog.text
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["student_spread"] == spread


# ------------------------------------------------------------------------------------------- failing plugins
class ExplodingTracker:
    @hookimpl
    def rtlab_step_end(self, run, metrics):
        return 1 / 0


def test_plugin_failing_during_training_is_named(tmp_path, capsys, with_plugin):
    with_plugin(exploding_tracker=ExplodingTracker())
    code = main(["train", *FAST, f"hydra.run.dir={tmp_path / 'run'}"])
    lines = _errors(capsys.readouterr().err)
    assert code == 1 and lines == ["rtlab: error: plugin 'exploding_tracker' failed in rtlab_step_end: "
                                   "ZeroDivisionError: division by zero"]
    assert "ZeroDivisionError" in (tmp_path / "run" / "error.txt").read_text()


@dataclass
class BrokenOptions:
    pass


class BrokenProbe:
    """An evaluator that fails on the student."""

    def __init__(self, opts):
        self.opts = opts

    def evaluate(self, features, run):
        if features.target == "student":
            raise ValueError("probe exploded")
        return {"broken": 0.5}


class FailingAnalysis:
    @hookimpl
    def rtlab_register(self, registry):
        registry.add("evaluator", "broken", BrokenProbe, BrokenOptions)

    @hookimpl
    def rtlab_summarize(self, run, summary):
        raise RuntimeError("analysis exploded")


def test_failing_evaluator_and_analysis_keep_the_training_results(tmp_path, capsys, with_plugin):
    with_plugin(failing_analysis=FailingAnalysis())
    run_dir = tmp_path / "run"
    code = main(["train", *FAST, "evaluator=[knn,broken]", f"hydra.run.dir={run_dir}"])
    lines = _errors(capsys.readouterr().err)
    assert code == 1 and len(lines) == 1, lines
    assert "the run finished, but evaluator 'broken' (plugin failing_analysis) on student at epoch 0 failed: " \
           "ValueError: probe exploded" in lines[0]
    assert f"the training results are in {run_dir}" in lines[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    errors = [e["error"] for e in summary["errors"]]
    assert "plugin 'failing_analysis' failed in rtlab_summarize: RuntimeError: analysis exploded" in errors
    assert sum("probe exploded" in e for e in errors) == 2  # before and after training
    assert 0.0 <= summary["metrics"]["knn/student"] <= 1.0 and summary["metrics"]["broken/teacher"] == 0.5
    assert (run_dir / "checkpoints" / "final.json").exists()  # the checkpoint plugin still ran


# ----------------------------------------------------------------------------------------------------- locks
def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from framework._base.runlock import RunLock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    with pytest.raises(Exception, match="in use by a live run"):
        with RunLock(tmp_path), RunLock(tmp_path):
            pass


def test_lock_without_flock_checks_the_pid(tmp_path, monkeypatch):
    import fcntl

    from framework._base.errors import RtlabError
    from framework._base.runlock import RunLock

    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
        with pytest.raises(RtlabError, match=f"in use by a live run \\(PID {live.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()
    with RunLock(tmp_path):  # now dead: taken over
        pass


# ------------------------------------------------------------------------------------ stateful components
@dataclass
class CountingOptions:
    pass


class CountingUpdater:
    """A teacher updater with state: how often it ran and a running mean of the student's first weight."""

    frozen = True

    def __init__(self, opts):
        self.updates = 0
        self.mean = torch.zeros(())

    def update(self, run):
        self.updates += 1
        w = next(run.student.parameters()).detach().float().mean().cpu()
        self.mean = self.mean + (w - self.mean) / self.updates

    def epoch_end(self, run):
        pass

    def state_dict(self):
        return {"updates": self.updates, "mean": self.mean}

    def load_state_dict(self, state):
        self.updates, self.mean = int(state["updates"]), state["mean"].clone()


class Crash:
    """Stops the process at a step, as a pre-emption would (after some records were written)."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def rtlab_register(self, registry):
        registry.add("updater", "counting", CountingUpdater, CountingOptions)

    @hookimpl
    def rtlab_step_end(self, run, metrics):
        if run.step == self.step:
            raise KeyboardInterrupt


def test_stateful_component_resumes_exactly(tmp_path):
    overrides = [*FAST, "updater=counting", "train.batch_size=25", "train.epochs=2", "eval.every=1",
                 "train.log_every=1", "train.state_steps=3"]  # 4 steps per epoch

    def run(folder, crash_at=None, resume=False):
        pm = create_plugin_manager(autoload=False)
        pm.register(Crash(crash_at), name="crash")
        summary = run_training(compose(overrides, pm.registry), folder, pm, resume=resume)
        return summary, pm

    reference, _ = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", crash_at=5)  # state at step 3; steps 4-5 are logged, then lost
    resumed, _ = run(tmp_path / "run", resume=True)
    assert resumed["metrics"] == reference["metrics"]
    from framework._nets.checkpoint import load_checkpoint

    ref_state, ref_meta = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last")
    run_state, run_meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert run_meta["components"]["updater"]["updates"] == reference["steps"] == resumed["steps"]
    assert torch.equal(run_state["component.updater.mean"], ref_state["component.updater.mean"])

    def records(folder):
        return [{k: v for k, v in json.loads(ln).items() if k != "time"}
                for ln in (folder / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "run") == records(tmp_path / "ref")


def test_parameter_check_names_the_non_finite_tensor_and_passes_huge_finite_values():
    from torch import nn

    from framework._base.errors import TrainingDiverged
    from framework._run.guards import check_parameters

    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    check_parameters([("student", net)], 3, "no checkpoint")
    with torch.no_grad():
        net[0].weight.fill_(3e38)  # finite, though its sum overflows: the exact check clears it
    check_parameters([("student", net)], 3, "no checkpoint")
    for bad in (float("nan"), float("inf"), -float("inf")):
        with torch.no_grad():
            net[0].weight.fill_(0.1)
            net[1].running_var[2] = bad
        with pytest.raises(TrainingDiverged, match=r"student parameter '1.running_var' is not finite after step 3"):
            check_parameters([("student", net)], 3, "no checkpoint")
