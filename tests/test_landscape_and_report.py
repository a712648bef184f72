"""Landscape planes from pretrain runs, and `rtlab report` on runs, a Hydra multirun and analysis folders."""

from __future__ import annotations

import argparse
import json

from analysis_helpers import DISTILL, quoted

from framework._contract.plugin_manager import create_plugin_manager
from plugins.analysis import run_analysis
from plugins.commands.report import command as report_command


def test_landscape_plane_through_pretrained_networks(tmp_path):
    out = tmp_path / "landscape"
    pm = create_plugin_manager(autoload=False)
    overrides = [*DISTILL, "evaluator=[knn]", f"+analysis.pretrain.a={quoted(DISTILL)}",
                 "analysis.points=[teacher:@a,student:@a,random:3]", "analysis.teacher=teacher:@a",
                 "analysis.grid=2", "analysis.span=[0,1]", "analysis.loss_images=128"]
    run_analysis("landscape", overrides, str(out), pm)
    assert (out / "pretrain" / "a" / "checkpoints" / "initial.json").exists()
    res = json.loads((out / "analysis.json").read_text())["results"]
    rows, at = res["rows"], res["at_points"]
    assert len(rows) == 2 and all(len(r) == 2 for r in rows)
    # lattice corners (0,0), (1,0), (0,1) are the three networks themselves, bit for bit
    assert rows[0][0] == at[0] and rows[1][0] == at[1] and rows[0][1] == at[2]
    student, random = at[1], at[2]
    assert student["kl"] < random["kl"]  # the distilled student is what minimised the KL to this teacher
    assert 0.0 <= student["knn"] <= 1.0 and student["loss"] > student["kl"] > 0.0
    assert (out / "plots" / "landscape.png").stat().st_size > 10_000

    (out / "report.md").unlink()
    assert report_command(argparse.Namespace(paths=[str(out)], out=None, target="student")) == 0
    assert "| (1, 0) | student:@a |" in (out / "report.md").read_text()


def test_report_of_a_multirun_compares_its_runs(cli, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in DISTILL if not o.startswith("train.epochs")]
    res = cli("train", "-m", *tiny, "train.epochs=2", "eval.every=1", "evaluator=[knn]", "train.seed=0,1",
              f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("report", str(sweep))
    assert res.returncode == 0, res.stderr[-2000:]
    for job in ("0", "1"):
        text = (sweep / job / "report.md").read_text()
        assert "![knn](plots/knn.png)" in text and "| knn | student |" in text
        assert (sweep / job / "plots" / "knn.png").stat().st_size > 10_000
    comparison = (sweep / "comparison" / "report.md").read_text()
    assert "| train.seed=0 |" in comparison and "| train.seed=1 |" in comparison
    assert (sweep / "comparison" / "plots" / "compare_knn.png").exists()
    res = cli("report", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "not a folder" in res.stderr


def test_report_draws_the_embedding_panel_from_the_final_checkpoint(tmp_path):
    from PIL import Image

    from plugins.commands.report import report_run
    from tiny_runs import fit, plugin_manager

    fit(tmp_path, "checkpoint.final=true", "eval.targets=[teacher,student]")
    text = report_run(tmp_path, plugin_manager().registry)
    assert "![embeddings](plots/embedding.png)" in text
    with Image.open(tmp_path / "plots" / "embedding.png") as img:
        assert img.size[0] >= 1000 and img.size[1] >= 900  # 2 x 2 panels, legible at 120 dpi
    assert "![embeddings]" not in report_run(tmp_path)  # without a registry: no checkpoint is read
