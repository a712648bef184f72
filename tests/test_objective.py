"""The paper's objective: the CE/KL loss, student initialisers, the frozen teacher and the BN control."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from framework._config.compose import compose
from framework._base.errors import RtlabError
from framework._nets.models import has_batchnorm, parameter_distance
from framework._run.loop import Run
from plugins.distill.losses import CrossEntropy, CrossEntropyOptions
from plugins.distill.students import interpolate


def test_ce_has_the_gradient_of_kl_and_logs_the_exact_kl():
    torch.manual_seed(0)
    s = torch.randn(8, 50, requires_grad=True)
    t = torch.randn(8, 50)
    loss = CrossEntropy(CrossEntropyOptions(teacher_temp=0.5, student_temp=2.0))
    ce, logs = loss(s, t)
    (g_ce,) = torch.autograd.grad(ce, s)
    kl = F.kl_div(F.log_softmax(s / 2.0, -1), F.log_softmax(t / 0.5, -1), log_target=True, reduction="batchmean")
    (g_kl,) = torch.autograd.grad(kl, s)
    assert torch.allclose(g_ce, g_kl, atol=1e-6)
    assert math.isclose(float(logs["kl"]), float(kl.detach()), rel_tol=1e-5)
    assert math.isclose(float(ce.detach()), float(logs["kl"] + logs["teacher_entropy"]), rel_tol=1e-5)


def test_interpolation_endpoints_and_variance_preservation():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(64, 64)
    fresh = torch.nn.Linear(64, 64)
    same = interpolate(teacher, fresh, 0.0, True)
    other = interpolate(teacher, fresh, 1.0, True)
    half = interpolate(teacher, fresh, 0.5, True)
    assert torch.equal(same.weight, teacher.weight) and torch.equal(other.weight, fresh.weight)
    expected = (0.5 * teacher.weight + 0.5 * fresh.weight) / math.sqrt(0.5)
    assert torch.allclose(half.weight, expected)
    assert same.weight is not teacher.weight
    tiny = interpolate(teacher, fresh, 1e-10, True)  # docs/paper.md#alpha-in-float32: float32 makes α = 1e-10 a copy
    assert float((tiny.weight - teacher.weight).detach().abs().max()) < 1e-9
    with pytest.raises(RtlabError, match=r"alpha must be in \[0, 1\]"):
        interpolate(teacher, fresh, 1.5, True)


def _run(tmp_path, *overrides):
    cfg = compose(TINY + ["data=digits", "data.train_size=256", "data.test_size=64", *overrides])
    return Run(cfg, tmp_path / "run").setup()


def test_teacher_is_frozen_in_eval_mode_and_the_student_moves(tmp_path):
    run = _run(tmp_path, "train.max_steps=3", "evaluator=[]")
    before = {k: v.clone() for k, v in run.teacher.state_dict().items()}
    assert not run.teacher.training and run.student.training
    assert not any(p.requires_grad for p in run.teacher.parameters())
    summary = run.fit()
    assert all(torch.equal(before[k], v) for k, v in run.teacher.state_dict().items())
    assert summary["steps"] == 3
    assert summary["student_distance_from_init"] > 0
    assert summary["teacher_student_distance_init"] < 1e-6  # α = 1e-10: numerically a copy
    assert parameter_distance(run.student, run.teacher) > 0


@pytest.mark.parametrize("student, far", [("copy", False), ("independent", True),
                                          ("interpolated", False)])
def test_student_initialisers(tmp_path, student, far):
    run = _run(tmp_path, f"student={student}")
    dist = parameter_distance(run.student, run.teacher)
    assert (dist > 1.0) if far else (dist < 1e-6)
    assert all(p.requires_grad for p in run.student.parameters())


def test_bn_control_changes_only_batchnorm_statistics(tmp_path):
    from framework._contract.features import bn_control

    run = _run(tmp_path)
    assert has_batchnorm(run.teacher)
    control = bn_control(run.teacher, run.data.train.images, run.placement, run.cfg.eval.batch_size)
    t_state, c_state = run.teacher.state_dict(), control.state_dict()
    params = dict(run.teacher.named_parameters())
    assert all(torch.equal(params[k], c_state[k]) for k in params)
    moved = [k for k in t_state if k.endswith("running_mean") and not torch.equal(t_state[k], c_state[k])]
    assert moved, "running statistics were not re-estimated"
    assert all(float(t_state[k].abs().max()) == 0.0 for k in moved)  # the teacher keeps its initial stats


def test_a_finished_run_rebuilds_its_networks_from_the_checkpoint(tmp_path):
    from framework._nets.models import network_from_checkpoint

    run = _run(tmp_path, "train.max_steps=2", "evaluator=[]", "backbone=resnet10t", "backbone.stem=cifar")
    run.fit()
    student, meta = network_from_checkpoint(run.registry, run.out_dir / "checkpoints" / "final", "student")
    assert meta["step"] == 2
    assert student.encoder.conv1[0].stride == (1, 1)  # the CIFAR stem is rebuilt, not just its weights
    x = run.prepare(run.data.test.images[:8])
    run.student.eval()
    with torch.no_grad():
        assert torch.allclose(student.eval()(x), run.student(x), atol=1e-6)
    with pytest.raises(RtlabError, match="has no 'critic' weights"):
        network_from_checkpoint(run.registry, run.out_dir / "checkpoints" / "final", "critic")


def test_a_vit_student_reloads_with_the_documented_call_and_gives_the_same_embeddings(tmp_path):
    """docs/getting-started.md: the checkpoint records the resolved patch size (7 at 28 px, not the model's 16),
    so network_from_checkpoint rebuilds the run's ViT, where a plain timm.create_model would not."""
    from framework._nets.models import network_from_checkpoint
    from framework._contract.plugin_manager import get_plugin_manager

    run = _run(tmp_path, "train.max_steps=2", "evaluator=[]", "backbone=vit_tiny_patch16_224", "data.image_size=28")
    run.fit()
    net, meta = network_from_checkpoint(get_plugin_manager().registry, tmp_path / "run" / "checkpoints" / "final")
    assert meta["backbone"]["patch_size"] == 7 and meta["data"]["size"] == [28, 28]
    assert net.encoder.patch_embed.patch_size == (7, 7)
    mean = torch.tensor(meta["data"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["data"]["std"]).view(1, -1, 1, 1)
    images = run.data.test.images[:4]
    with torch.no_grad():
        embeddings = net.eval().embed((images / 255 - mean) / std)
        assert torch.allclose(embeddings, run.student.eval().embed(run.prepare(images)), atol=1e-5)
