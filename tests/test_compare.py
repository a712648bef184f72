"""``rtlab compare``: a tiny grid of every registered method — the built-in ones and an external plugin's — writes
the table, CSV and plot; a second call reuses every finished cell and trains nothing."""

from __future__ import annotations

import csv
import json

import pytest

from test_external_plugin import installed  # noqa: F401  (the example plugin, installed through its entry point)

BUILTIN = ["random_teacher", "dino", "byol", "simsiam", "simclr", "barlow_twins", "vicreg", "moco_v2", "moco_v3",
           "nnclr", "swav", "dcl", "dclw", "tico", "wmse", "mmcr"]
EXTERNAL = "cosine_teacher"  # tests/external_plugin registers it
# one seed, one epoch of 128 digits, tiny heads; DINO and SwAV with two 4-px local crops
TINY_GRID = [
    "compare.backbones=[test_resnet]", "compare.seeds=[0]", "data=digits", "data.train_size=128",
    "data.test_size=64", "train.epochs=1", "train.batch_size=64", "train.threads=1", "head.hidden_dims=[32]",
    "head.out_dim=32", "evaluator.linear.epochs=1", "eval.every=0", "eval.targets=[student]",
    "progress.enabled=false", "tensorboard.enabled=false", "checkpoint.final=false",
    '+compare.overrides.dino=["augment.local_views=2","augment.local_size=4"]',
    '+compare.overrides.swav=["augment.local_views=2","augment.local_size=4"]',
]


def test_compare_runs_every_method_then_reuses_the_finished_cells(cli, installed, tmp_path):  # noqa: F811
    out = tmp_path / "cmp"
    first = cli("compare", *TINY_GRID, "--out", str(out), env=installed)
    assert first.returncode == 0, first.stderr[-3000:]
    methods = sorted([*BUILTIN, EXTERNAL])
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert sorted(r["method"] for r in rows) == methods
    for r in rows:
        assert r["backbone"] == "test_resnet" and r["runs"] == "1" and r["failed"] == "0"
        for key in ("knn_mean", "linear_mean", "knn_init_mean"):
            assert 0.0 <= float(r[key]) <= 1.0, (r["method"], key)
        assert float(r["wall_time_s_mean"]) > 0 and float(r["images_per_s_mean"]) > 0
    table = (out / "compare.md").read_text()
    assert all(f"| {m} | test_resnet | 1 |" in table for m in methods)
    assert (out / "plots" / "compare.png").stat().st_size > 0
    assert f"{len(methods)} cell(s) trained, 0 reused" in first.stdout
    cells = {m: out / "cells" / m / "test_resnet" / "seed_0" for m in methods}
    stamps = {m: (c / "summary.json").stat().st_mtime_ns for m, c in cells.items()}
    config = json.loads((out / "compare.json").read_text())
    assert {c["method"] for c in config["cells"] if c["status"] == "done"} == set(methods)

    second = cli("compare", *TINY_GRID, "--out", str(out), env=installed)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"0 cell(s) trained, {len(methods)} reused" in second.stdout
    assert "Launching" not in second.stdout + second.stderr  # no Hydra job was started
    assert {m: (c / "summary.json").stat().st_mtime_ns for m, c in cells.items()} == stamps
    assert list(csv.DictReader((out / "compare.csv").open())) == rows


def test_compare_refuses_unknown_methods_and_grid_overrides(cli, tmp_path):
    res = cli("compare", "compare.methods=[byoll]", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "unknown method preset 'byoll'; did you mean byol?" in res.stderr
    res = cli("compare", "train.seed=3", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "give compare.methods, compare.backbones and compare.seeds" in res.stderr
    assert not (tmp_path / "x" / "cells").exists()


def test_a_failing_cell_is_reported_and_the_others_tabulated(tmp_path):
    from plugins.commands.compare import CellsFailed, run_comparison

    out = tmp_path / "cmp"
    grid = [o for o in TINY_GRID if "overrides.dino" not in o]
    bad = [*grid, "compare.methods=[random_teacher,simclr]", '+compare.overrides.simclr=["objective.temperature=-1"]']
    with pytest.raises(CellsFailed, match="simclr/test_resnet/seed 0"):
        run_comparison(bad, str(out))
    rows = {r["method"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert rows["random_teacher"]["runs"] == "1" and rows["random_teacher"]["failed"] == "0"
    assert rows["simclr"]["runs"] == "0" and rows["simclr"]["failed"] == "1" and rows["simclr"]["knn_mean"] == ""
    failed = next(c for c in json.loads((out / "compare.json").read_text())["cells"] if c["method"] == "simclr")
    assert "objective.temperature must be positive" in failed["error"]
    assert "| simclr | test_resnet | 0 (1 failed) |" in (out / "compare.md").read_text()


def test_compare_tables_gains_over_controls_and_names_the_spread_sd():
    from plugins.commands.compare import csv_text, markdown, summarise

    results = []
    for seed, (knn, bn) in enumerate([(0.70, 0.60), (0.74, 0.61), (0.72, 0.63)]):
        results.append({"method": "dino", "backbone": "r", "seed": seed, "status": "done", "knn": knn, "linear": 0.5,
                        "knn_minus_teacher_bn": knn - bn, "knn_minus_teacher": 0.01 * (seed - 1),
                        "linear_minus_teacher": None, "wall_time_s": 1.0, "images_per_s": 10.0})
    results.append({"method": "byol", "backbone": "r", "seed": 0, "status": "done", "knn": 0.6, "linear": 0.5,
                    "knn_minus_teacher_bn": 0.05, "wall_time_s": 1.0, "images_per_s": 10.0})
    rows = summarise(results, ["dino", "byol"], ["r"])
    g = rows[0]["gains"]["knn_minus_teacher_bn"]
    assert g["n"] == 3 and g["excludes_zero"] and 0.089 < g["lo"] <= g["mean"] <= g["hi"] < 0.131
    assert not rows[0]["gains"]["knn_minus_teacher"]["excludes_zero"]
    table = markdown(rows)
    assert f"{100 * g['mean']:+.2f} [{100 * g['lo']:+.2f}, {100 * g['hi']:+.2f}] *" in table
    assert "| byol | r | 1 | 60.00 | 50.00 |" in table and "+5.00 (n = 1)" in table  # one seed: no ± 0.00
    header = csv_text(rows).splitlines()[0].split(",")
    assert "linear_sd" in header and "knn_sd" in header and "linear_std" not in header
    assert "knn_minus_teacher_bn_lo" in header
    byol = dict(zip(header, csv_text(rows).splitlines()[2].split(",")))
    assert byol["knn_sd"] == "" and byol["knn_minus_teacher_bn_mean"] == "0.05" and byol["knn_minus_teacher_bn_lo"] == ""
