"""Teacher initialisers (random, checkpoint, restart) and student initialisers (interpolated, neighborhood,
float64) on real runs: exact weights, formulas, the logged initial distance and the error messages."""

from __future__ import annotations

import json
import math

import pytest
import torch

from framework._base.errors import RtlabError
from tiny_runs import compose_run, fit


def params(net):
    return {k: v.detach().double().cpu() for k, v in net.named_parameters()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run with a final checkpoint, its student changed by training."""
    out = tmp_path_factory.mktemp("trained")
    run = compose_run(out, "train.max_steps=3", "checkpoint.final=true", "evaluator=[]")
    run.fit()
    return out, params(run.student), params(run.teacher)


def test_checkpoint_teacher_is_the_earlier_runs_network(trained, tmp_path):
    out, student, teacher = trained
    for which, expected in (("student", student), ("teacher", teacher)):
        run = compose_run(tmp_path / which, "teacher=checkpoint", f"teacher.path={out}", f"teacher.which={which}",
                          "student=copy", "evaluator=[]")
        got = params(run.teacher)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got)
        assert not run.teacher.training and not any(p.requires_grad for p in run.teacher.parameters())
        assert run.summary["teacher_checkpoint"]["which"] == which


def test_checkpoint_teacher_from_a_plain_backbone_file(trained, tmp_path):
    """A bare timm state dict loads into the encoder; the head keeps the init of teacher.seed."""
    from safetensors.torch import save_file

    from framework._nets.checkpoint import load_checkpoint

    out, _, _ = trained
    tensors, _ = load_checkpoint(out / "checkpoints" / "final")
    encoder = {k[len("student.encoder."):]: v for k, v in tensors.items() if k.startswith("student.encoder.")}
    path = tmp_path / "backbone.safetensors"
    save_file(encoder, str(path))
    run = compose_run(tmp_path / "run", "teacher=checkpoint", f"teacher.path={path}", "teacher.seed=0",
                      "evaluator=[]")
    got = params(run.teacher)
    assert all(torch.equal(got[f"encoder.{k}"], v.double()) for k, v in encoder.items() if f"encoder.{k}" in got)
    fresh = compose_run(tmp_path / "fresh", "evaluator=[]")  # teacher=random seed 0: the same head init
    assert torch.equal(got["head.last.weight"], params(fresh.teacher)["head.last.weight"])


def test_checkpoint_teacher_errors(trained, tmp_path):
    out, _, _ = trained
    with pytest.raises(RtlabError, match="needs teacher.path"):
        compose_run(tmp_path / "a", "teacher=checkpoint")
    with pytest.raises(RtlabError, match="no checkpoint at"):
        compose_run(tmp_path / "b", "teacher=checkpoint", f"teacher.path={tmp_path / 'nope'}")
    with pytest.raises(RtlabError, match="another architecture"):
        compose_run(tmp_path / "c", "teacher=checkpoint", f"teacher.path={out}", "head.out_dim=32")


def test_restart_teacher_is_the_converged_student(trained, tmp_path):
    out, student, _ = trained
    summary = fit(tmp_path, "teacher=restart", f"teacher.path={out}", "student=copy", "train.max_steps=1",
                  "evaluator=[]")
    assert summary["restart_round"] == 2
    assert summary["teacher_student_distance_init"] == 0.0
    run = compose_run(tmp_path / "again", "teacher=restart", f"teacher.path={out}", "evaluator=[]")
    got = params(run.teacher)
    assert all(torch.equal(got[k], student[k]) for k in got)


def test_interpolated_and_neighborhood_students_follow_their_formulas(tmp_path):
    alpha, eps = 0.3, 0.5
    run = compose_run(tmp_path / "i", "student=interpolated", f"student.alpha={alpha}", "student.seed=5",
                      "evaluator=[]")
    fresh = params(run.new_network(5))
    teacher, student = params(run.teacher), params(run.student)
    delta = math.sqrt(alpha ** 2 + (1 - alpha) ** 2)
    for k in teacher:
        expected = ((1 - alpha) * teacher[k] + alpha * fresh[k]) / delta
        assert torch.allclose(student[k], expected, atol=1e-6), k
    run = compose_run(tmp_path / "n", "student=neighborhood", f"student.epsilon={eps}", "student.seed=5",
                      "evaluator=[]")
    teacher, student = params(run.teacher), params(run.student)
    for k in teacher:
        expected = (teacher[k] + eps * fresh[k]) / math.sqrt(1 + eps ** 2)
        assert torch.allclose(student[k], expected, atol=1e-6), k


def test_tiny_alpha_survives_only_in_float64(tmp_path):
    """α = 1e-10 in float32 barely moves the student (docs/paper.md#alpha-in-float32); in float64 every weight moves."""
    r32 = compose_run(tmp_path / "f32", "student.alpha=1e-10", "evaluator=[]")
    r64 = compose_run(tmp_path / "f64", "student.alpha=1e-10", "train.precision=fp64", "evaluator=[]",
                      "train.max_steps=1")
    assert next(r64.student.parameters()).dtype == torch.float64
    changed32 = sum(int((a != b).sum()) for a, b in zip(r32.student.parameters(), r32.teacher.parameters()))
    changed64 = sum(int((a != b).sum()) for a, b in zip(r64.student.parameters(), r64.teacher.parameters()))
    total = sum(p.numel() for p in r64.student.parameters())
    assert changed32 < 0.05 * total
    assert changed64 > 0.9 * total
    d32, d64 = r32.summary["teacher_student_distance_init"], r64.summary["teacher_student_distance_init"]
    assert 0 < d32 < d64 < 1e-8
    summary = r64.fit()
    assert summary["precision"] == "fp64" and summary["student_distance_from_init"] > 0


def test_initial_distance_is_logged_to_metrics(tmp_path):
    summary = fit(tmp_path, "student.alpha=0.5", "eval.before=true", "evaluator=[]", "train.max_steps=1")
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0 and first["kind"] == "eval"
    assert first["teacher_student_distance"] == pytest.approx(summary["teacher_student_distance_init"])
    assert first["student_distance_from_init"] == 0.0
    assert summary["metrics"]["student_distance_from_init"] > 0.0


def test_student_identical_to_teacher_is_reported(tmp_path):
    run = compose_run(tmp_path, "student=independent", "student.seed=0", "teacher.seed=0", "evaluator=[]")
    assert any("bit-identical" in w for w in run.summary["warnings"])


def test_pretrained_teacher_needs_the_hub(tmp_path):
    with pytest.raises(RtlabError, match="Hub must be reachable"):
        compose_run(tmp_path, "teacher=checkpoint", "teacher.pretrained=true", "backbone=resnet18", "evaluator=[]")
