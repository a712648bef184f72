"""``rtlab verify``: a preset's expected results checked against a run of it."""

from __future__ import annotations

import pytest

from conftest import TINY

FAST = [*TINY, "data.train_size=300", "data.test_size=200", "checkpoint.final=false", "tensorboard.enabled=false",
        "train.threads=1", "eval.targets=[teacher_bn,student]", "eval.before=false"]


def test_verify_names_the_impossible_expectation_and_exits_1(cli, tmp_path):
    expect = ("expect=[{metric:knn/student,value:0.5,tolerance:0.5},"
              "{metric:knn/student,value:2.0,tolerance:0.01},"
              "{metric:knn/student,minus:knn/teacher_bn,value:0.0,tolerance:1.0},"
              "{metric:knn/student,value:0.5,tolerance:0.5,budget:{train.epochs:20}}]")
    res = cli("verify", *FAST, expect, "--out", str(tmp_path / "v"), env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 1, res.stderr[-2000:]
    out = res.stdout
    assert "PASS knn/student = " in out and "(expected 0.5 ± 0.5)" in out
    assert "FAIL knn/student = " in out and "(expected 2 ± 0.01)" in out
    assert "PASS knn/student − knn/teacher_bn = " in out
    assert "SKIP knn/student: measured at train.epochs=20; this configuration differs" in out
    assert "rtlab: error: 1 expectation(s) failed: knn/student" in res.stderr
    assert len(res.stderr.strip().splitlines()[-1]) < 300


def test_verify_refuses_a_preset_without_expectations(cli, tmp_path):
    res = cli("verify", *FAST, "expect=[]", "--out", str(tmp_path / "v"))  # the default preset's own, cleared
    assert res.returncode == 2 and "carries no expected results; add an `expect:` list" in res.stderr
    res = cli("verify", *FAST, "expect=[{metrik:knn/student,value:1}]", "--out", str(tmp_path / "v"))
    assert res.returncode == 2 and "metrik" in res.stderr  # struct mode: typos in expectations are caught


@pytest.mark.slow
def test_verify_the_default_job_on_this_cpu(cli, tmp_path):
    """The default job (~4 minutes on 2 cores) meets the numbers docs/getting-started.md reports."""
    res = cli("verify", "experiment=default", "train.threads=1", "--out", str(tmp_path / "v"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "FAIL" not in res.stdout and "rtlab verify: all " in res.stdout
