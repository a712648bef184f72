"""tools/gpu_check.sh plans the GPU check without a GPU (--dry-run), refuses bad settings in one line, and its
paper-run helper fits the epochs to the budget and writes the comparison table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from gpu_paper_runs import PAPER, plan_epochs, table  # noqa: E402


def gpu_check(tmp_path, **env):
    cifar = tmp_path / "cifar10"
    cifar.mkdir(exist_ok=True)
    (cifar / "train.parquet").touch()
    full = {**os.environ, "PYTHON": sys.executable, "RTLAB_CIFAR10": str(cifar), "RTLAB_GPU_OUT": str(tmp_path / "out"),
            **env}
    return subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env=full, timeout=300)


def test_dry_run_lists_every_step(tmp_path):
    res = gpu_check(tmp_path, RTLAB_GPU_BUDGET_S="900")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "-m pytest -q -m cuda" in out and "bench --preset gpu" in out
    for preset in ("paper_cifar10_resnet18", "paper_cifar10_vgg11"):
        assert f"experiment={preset}" in out and f"{preset}: " in out
    assert f"data.path={tmp_path / 'cifar10'}" in out and "train.max_steps=60" in out
    assert "train.epochs=" in out and (tmp_path / "out" / "summary.md").exists()


@pytest.mark.parametrize("env, message", [
    ({"RTLAB_GPU_BUDGET_S": "ten"}, "gpu_check: RTLAB_GPU_BUDGET_S must be a number of seconds, got 'ten'"),
    ({"RTLAB_CIFAR10": "/nonexistent/cifar10"}, "gpu_check: no CIFAR-10 parquet files found; set RTLAB_CIFAR10=DIR"),
])
def test_bad_settings_fail_in_one_line(tmp_path, env, message):
    res = gpu_check(tmp_path, **env)
    assert res.returncode == 2 and res.stderr.startswith(message) and res.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_epochs_fill_the_budget():
    assert plan_epochs(10.0, 5.0, 600.0) == (54, 5)  # 540 s training + 11 evaluations of 5 s = 595 s
    assert plan_epochs(0.1, 0.1, 1e6) == (150, 15)  # never more than the paper's 150 epochs
    assert plan_epochs(100.0, 10.0, 5.0) == (1, 1)  # at least one epoch


def test_table_compares_with_the_paper():
    row = {"preset": "paper_cifar10_vgg11", "epochs": 3, "steps": 588, "wall_time_s": 99.0,
           "metrics": {"knn/teacher": 0.4, "knn/student": 0.45, "linear/student": 0.5},
           "best": {"knn/student": 0.46}}
    text = table([row])
    want = "| paper_cifar10_vgg11 | 3 | 588 | 99.0 | knn | 40.00 | — | 45.00 (46.00) | — | 44.92 → 51.32 (33.61) |"
    assert want in text
    assert "JPEG" in text and PAPER["paper_cifar10_resnet18"]["linear/student"] == 46.02
