"""A plugin in its own package, installed with an ``rtlab`` entry point, contributes selectable components."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

PACKAGE = Path(__file__).parent / "external_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example package pip-installed into a throw-away site directory (the pytester way)."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
           str(target), str(PACKAGE)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:  # no setuptools in this venv: let pip fetch the build backend
        res = subprocess.run([c for c in cmd if c != "--no-build-isolation"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(target.glob("rtlab_example_plugin-0.3.1.dist-info"))
    return {"PYTHONPATH": str(Path(__file__).resolve().parents[1]) + ":" + str(target)}


def test_plugins_command_lists_the_external_plugin(cli, installed):
    res = cli("plugins", "--json", env=installed)
    assert res.returncode == 0, res.stderr
    listing = {p["name"]: p for p in json.loads(res.stdout)}
    ext = listing["example"]
    assert ext["version"] == "0.3.1" and not ext["builtin"] and ext["module"] == "rtlab_example_plugin"
    assert {"kind": "loss", "name": "cosine"} in ext["components"]
    assert {"kind": "evaluator", "name": "spread"} in ext["components"]
    assert {"group": "method", "name": "cosine_teacher"} in ext["presets"]
    blocked = cli("plugins", "--json", env={**installed, "RTLAB_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "example" not in {p["name"] for p in json.loads(blocked.stdout)}


def test_a_run_selects_the_external_loss_and_evaluator(cli, installed, tmp_path):
    out = tmp_path / "run"
    res = cli("train", *TINY, "data=digits", "data.train_size=200", "data.test_size=60", "loss=cosine",
              "loss.scale=2.0", "evaluator=[knn,spread]", f"hydra.run.dir={out}", env=installed)
    assert res.returncode == 0, res.stderr[-1500:]
    summary = json.loads((out / "summary.json").read_text())
    spread = summary["metrics"]["spread/student"]
    assert spread > 0
    assert summary["metric_kinds"]["spread"] == {"accuracy": False, "higher_is_better": True}
    # the declared kind: the final table prints the number as it is (not x100 with a %), knn stays a percentage
    row = next(line for line in res.stdout.splitlines() if line.startswith("student "))
    assert f"{spread:.4g}" in row.split() and f"{100 * spread:.2f}%" not in row
    assert f"{100 * summary['metrics']['knn/student']:.2f}%" in row.split()
    report = cli("report", str(out), env=installed)
    assert report.returncode == 0, report.stderr[-1500:]
    line = next(x for x in (out / "report.md").read_text().splitlines() if x.startswith("| spread | student |"))
    assert f"{spread:.4g}" in line and "%" not in line
    assert "knn/student" in summary["metrics"] and "linear/student" not in summary["metrics"]
    train_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                  if '"train"' in line]
    assert "train/cosine" in train_rows[-1]
    assert {"kind": "loss", "name": "cosine"} in next(
        p for p in json.loads((out / "plugins.json").read_text()) if p["name"] == "example")["components"]
