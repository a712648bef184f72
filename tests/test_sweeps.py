"""Sweeps that waste nothing: a killed ``rtlab train -m`` started again trains only its unfinished jobs; joblib
jobs share the cores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY
from test_resume import _env, _train_records

SWEEP = [*TINY, "data=digits", "data.train_size=320", "data.test_size=64", "train.batch_size=16",
         "evaluator=[knn]", "train.log_every=1", "train.threads=1", "train.state_steps=5"]


def _sweep(folder) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framework.cli", "train", "-m", "train.seed=0,1,2,3",
                             f"hydra.sweep.dir={folder}", *SWEEP], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_sweep_started_again_trains_only_its_unfinished_jobs(tmp_path):
    folder = tmp_path / "sweep"
    first = _sweep(folder)
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None:
        if any(r.get("kind") == "train" and r["step"] >= 7 for r in _train_records(folder / "2")):
            first.send_signal(signal.SIGKILL)  # job 2 mid-way (its state at step 5), job 3 not started
            break
        time.sleep(0.005)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, out[-3000:]
    assert [(folder / str(j) / "summary.json").exists() for j in range(4)] == [True, True, False, False]
    done = {j: ((folder / str(j) / "metrics.jsonl").read_bytes(), (folder / str(j) / "summary.json").stat().st_mtime_ns)
            for j in (0, 1)}

    again = _sweep(folder)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    for j in (0, 1):
        assert f"rtlab: {folder / str(j)} already finished with this configuration; skipped" in out, out[-3000:]
        assert ((folder / str(j) / "metrics.jsonl").read_bytes(),
                (folder / str(j) / "summary.json").stat().st_mtime_ns) == done[j]  # not trained again
    assert f"rtlab: resuming {folder / '2'}" in out and f"resuming {folder / '3'}" not in out, out[-3000:]
    for j in (2, 3):
        summary = json.loads((folder / str(j) / "summary.json").read_text())
        assert summary["steps"] == 20
        assert [r["step"] for r in _train_records(folder / str(j)) if r["kind"] == "train"] == list(range(1, 21))
    # every job kept its own configuration
    seeds = {j: OmegaConf.load(folder / str(j) / "config.yaml").train.seed for j in range(4)}
    assert seeds == {0: 0, 1: 1, 2: 2, 3: 3}


def test_joblib_jobs_share_the_cores(monkeypatch):
    from framework.cli import sweeps

    assert sweeps.joblib_jobs(-1, 8) == 8 and sweeps.joblib_jobs(-2, 8) == 7 and sweeps.joblib_jobs(3, 8) == 3
    monkeypatch.setattr(sweeps, "available_cores", lambda: 8)
    launcher = OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                 "n_jobs": 3})
    threads = torch.get_num_threads()
    try:
        assert sweeps.pin_threads(launcher, OmegaConf.create({"train": {"threads": None}})) == 2  # 3 x 2 <= 8
        assert torch.get_num_threads() == 2
        assert sweeps.pin_threads(launcher, OmegaConf.create({"train": {"threads": 4}})) == 4  # explicit: kept
        basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
        assert sweeps.pin_threads(basic, OmegaConf.create({"train": {"threads": None}})) is None
    finally:
        torch.set_num_threads(threads)


def test_a_job_folder_is_skipped_when_finished_and_continued_when_not(tmp_path):
    from framework.cli import sweeps

    cfg = OmegaConf.create({"name": "x", "train": {"seed": 1, "threads": None}})
    folder = tmp_path / "job"
    assert sweeps.job_plan(folder, cfg) == sweeps.NEW
    folder.mkdir()
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert sweeps.job_plan(folder, cfg) == sweeps.RESUME
    (folder / "summary.json").write_text("{}")
    assert sweeps.job_plan(folder, cfg) == sweeps.SKIP
    other = OmegaConf.create({"name": "x", "train": {"seed": 2, "threads": None}})
    assert sweeps.job_plan(folder, other) == sweeps.NEW  # another run's folder: the run refuses to write there


def _submitit_installed() -> bool:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_slurm_launcher_preset_runs_one_task_per_gpu():
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    from framework._config.compose import config_dir, register_configs
    from tiny_runs import plugin_manager

    if not _submitit_installed():  # submitit's own schema, reduced to the settings the preset touches
        from dataclasses import dataclass, field

        @dataclass
        class SubmititSlurmStandIn:
            _target_: str = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
            gpus_per_node: int = 0
            tasks_per_node: int = 1
            nodes: int = 1
            cpus_per_task: int = 1
            timeout_min: int = 60
            max_num_timeout: int = 0
            signal_delay_s: int = 120
            partition: str = ""
            additional_parameters: dict = field(default_factory=dict)

        ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm", node=SubmititSlurmStandIn,
                                     provider="test")
    register_configs(plugin_manager().registry)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4  # one process per GPU
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeued, warned ahead of the limit


@pytest.mark.skipif(not _submitit_installed(), reason="submitit is not installed (pip install 'rtlab[sweeps]')")
def test_submitit_local_executor_runs_a_sweep_job(tmp_path):
    res = subprocess.run([sys.executable, "-m", "framework.cli", "train", "-m", "hydra/launcher=submitit_local",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", "train.seed=0", *SWEEP], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())["steps"] == 20
