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
    from framework import sweeps

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
