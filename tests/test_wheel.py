"""rtlab installed as users install it: a built wheel (not an editable checkout) lists its plugins and trains.

The wheel is built without network access (``--no-build-isolation``: the venv's setuptools), installed with
``--no-deps --target`` into a throw-away folder, and used from a subprocess whose working directory and
``sys.path`` do not contain the source tree, so nothing can fall back on the checkout.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, TINY


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    dist, site = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(dist), str(ROOT)], capture_output=True, text=True, cwd=dist)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = dist.glob("rtlab-*.whl")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                          str(wheel)], capture_output=True, text=True, cwd=dist)
    assert res.returncode == 0, res.stderr[-3000:]
    return wheel, site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_the_wheel_ships_every_builtin_plugin_and_config(wheel_site):
    wheel, _ = wheel_site
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for d in ("framework", "plugins", "configs")
               for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)


def test_the_installed_wheel_lists_plugins_and_trains_outside_the_source_tree(wheel_site, tmp_path):
    _, site = wheel_site
    where = _run(site, tmp_path, "-c", "import framework, plugins, configs; "
                                       "print(framework.__file__, plugins.__file__, configs.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(Path(f).is_relative_to(site) for f in where.stdout.split()), where.stdout

    listing = _run(site, tmp_path, "-m", "framework.cli", "plugins", "--json")
    assert listing.returncode == 0, listing.stderr[-2000:]
    from framework._contract.plugin_manager import DEFAULT_PLUGINS

    assert {p["name"] for p in json.loads(listing.stdout)} >= {m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS}

    out = tmp_path / "run"
    train = _run(site, tmp_path, "-m", "framework.cli", "train", *TINY, "data=digits", "data.train_size=128",
                 "data.test_size=64", "train.max_steps=2", "train.threads=1", f"hydra.run.dir={out}")
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and "knn/student" in summary["metrics"]


def test_a_plugin_package_written_against_the_face_works_from_the_wheel(wheel_site, tmp_path):
    """The example plugin (tests/external_plugin, framework.api only) installed beside the wheel: its init scheme
    (backbone.init=orthogonal), its analysis of a finished run (load_run) and its number-valued evaluator in
    rtlab compare's table and CSV, run from outside the source tree."""
    _, site = wheel_site
    plugin = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                             "--target", str(site), str(ROOT / "tests" / "external_plugin")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert plugin.returncode == 0, plugin.stderr[-2000:]
    small = [*TINY, "data=digits", "data.train_size=96", "data.test_size=48", "train.threads=1"]

    run = tmp_path / "run"
    train = _run(site, tmp_path, "-m", "framework.cli", "train", *small, "backbone.init=orthogonal",
                 "evaluator=[knn,spread]", f"hydra.run.dir={run}")
    assert train.returncode == 0, train.stderr[-2000:]
    script = ("import torch; from framework.api import load_run\n"
              f"r = load_run({str(run)!r}, device='cpu')\n"
              "conv = next(m for m in r.network('teacher').encoder.modules() if isinstance(m, torch.nn.Conv2d))\n"
              "w = conv.weight.flatten(1)\n"
              "g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w\n"
              "print(r.cfg.backbone.init, float((g - torch.eye(len(g))).abs().max()))")
    check = _run(site, tmp_path, "-c", script)
    assert check.returncode == 0, check.stderr[-2000:]
    init, off = check.stdout.split()
    assert init == "orthogonal" and float(off) < 1e-4  # the teacher's stem conv is orthogonal

    analysis = _run(site, tmp_path, "-m", "framework.cli", "analyze", "ncm", str(run))
    assert analysis.returncode == 0, analysis.stderr[-2000:]
    (folder,) = (run / "analyses").glob("ncm-*")
    result = json.loads((folder / "analysis.json").read_text())["results"][str(run.resolve())]
    assert result["dataset"] == "digits" and 0.0 <= result["teacher"] <= 1.0 and 0.0 <= result["student"] <= 1.0

    out = tmp_path / "cmp"
    compare = _run(site, tmp_path, "-m", "framework.cli", "compare", *[o for o in small if "backbone" not in o],
                   "compare.backbones=[test_resnet]", "compare.methods=[cosine_teacher]",
                   "compare.metrics=[knn,spread]", "evaluator=[knn,spread]", "--out", str(out))
    assert compare.returncode == 0, compare.stderr[-2000:]
    (row,) = csv.DictReader((out / "compare.csv").open())
    assert float(row["spread_mean"]) > 0 and 0.0 <= float(row["knn_mean"]) <= 1.0
    header = (out / "compare.md").read_text().splitlines()[0]
    assert "| spread |" in header and "spread (%)" not in header and "k-NN (%)" in header
