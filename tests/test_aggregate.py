"""``rtlab aggregate``: mean ± std of sweep results grouped by config values."""

from __future__ import annotations

import json

import pytest
import yaml

from framework._base.errors import RtlabError
from plugins.commands.aggregate import aggregate, find_runs, markdown


def write_run(folder, alpha, seed, knn, best=None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"student": {"alpha": alpha}, "train": {"seed": seed}}))
    (folder / "summary.json").write_text(json.dumps({"metrics": {"knn/student": knn, "knn/teacher": 0.5,
                                                                 "teacher_student_distance": 1.0},
                                                     "best": {"knn/student": best or knn}}))


def test_groups_and_statistics(tmp_path):
    for i, (alpha, seed, knn) in enumerate([(0.0, 0, 0.6), (0.0, 1, 0.8), (1.0, 0, 0.55), (1.0, 1, 0.65)]):
        write_run(tmp_path / "sweep" / str(i), alpha, seed, knn, best=knn + 0.01)
    names, table = aggregate(find_runs([str(tmp_path / "sweep")]), ["student.alpha"], ["knn/*"])
    assert names == ["knn/student", "knn/teacher"]
    assert [row["by"]["student.alpha"] for row in table] == [0.0, 1.0]
    mean, std, n = table[0]["stats"]["knn/student"]
    assert (mean, n) == (pytest.approx(0.7), 2) and std == pytest.approx(0.1414213, rel=1e-5)
    _, best = aggregate(find_runs([str(tmp_path / "sweep")]), ["student.alpha"], ["knn/student"], best=True)
    assert best[1]["stats"]["knn/student"][0] == pytest.approx(0.61)
    text = markdown(["student.alpha"], names, table)
    assert "| 0.0 | 2 | 70.00 ± 14.14 | 50.00 ± 0.00 |" in text


def test_command(tmp_path, capsys):
    from framework.cli.main import main

    write_run(tmp_path / "r0", 0.5, 0, 0.7)
    assert main(["aggregate", str(tmp_path), "--by", "student.alpha", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["stats"]["knn/student"][0] == 0.7
    assert main(["aggregate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["aggregate", str(tmp_path), "--by", "student.beta"]) == 2
    assert "student.beta" in capsys.readouterr().err
    with pytest.raises(RtlabError):
        find_runs([str(tmp_path / "r0" / "config.yaml")])


def test_gains_over_controls_are_paired_per_seed_with_bootstrap_intervals(tmp_path, capsys):
    from framework.cli.main import main
    from framework._base.intervals import bootstrap_interval

    student, bn = [0.70, 0.74, 0.72], [0.60, 0.61, 0.63]
    for seed in range(3):
        folder = tmp_path / "sweep" / str(seed)
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"student": {"alpha": 0.0}, "train": {"seed": seed}}))
        metrics = {"knn/student": student[seed], "knn/teacher_bn": bn[seed],
                   "knn/teacher": student[seed] + (0.01 if seed else -0.02),  # no clear gain over the teacher
                   "rankme/student": 10.0 + seed, "rankme/teacher": 8.0}
        (folder / "summary.json").write_text(json.dumps({"metrics": metrics, "metric_kinds": {
            "rankme": {"accuracy": False, "higher_is_better": True}}}))
    _, table = aggregate(find_runs([str(tmp_path / "sweep")]), ["student.alpha"], ["knn/*", "rankme/*"])
    g = table[0]["gains"]["knn/student"]
    diffs = [s - b for s, b in zip(student, bn)]
    assert g["teacher_bn"]["mean"] == pytest.approx(sum(diffs) / 3) and g["teacher_bn"]["n"] == 3
    assert (g["teacher_bn"]["lo"], g["teacher_bn"]["hi"]) == bootstrap_interval(diffs)  # seeded: reproducible
    assert g["teacher_bn"]["lo"] <= min(diffs) + 1e-12 and g["teacher_bn"]["excludes_zero"]
    assert not g["teacher"]["excludes_zero"] and "input" not in g
    assert main(["aggregate", str(tmp_path / "sweep"), "--by", "student.alpha", "--metrics", "knn/*,rankme/*"]) == 0
    out = capsys.readouterr().out
    lo, hi = g["teacher_bn"]["lo"], g["teacher_bn"]["hi"]
    assert f"| 0.0 | knn/student | {100 * g['teacher']['mean']:+.2f} [" in out
    assert f"{100 * g['teacher_bn']['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] * |" in out
    assert "| 0.0 | rankme/student | +3 [" in out  # numbers are differences as they are, not points


def test_one_run_prints_the_value_alone(tmp_path, capsys):
    from framework.cli.main import main

    write_run(tmp_path / "r0", 0.5, 0, 0.7)
    assert main(["aggregate", str(tmp_path), "--by", "student.alpha"]) == 0
    out = capsys.readouterr().out
    assert "| 0.5 | 1 | 70.00 | 50.00 |" in out and "±" not in out
    assert "| 0.5 | knn/student | +20.00 (n = 1) | - | - |" in out
