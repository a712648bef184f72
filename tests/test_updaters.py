"""Teacher updaters on real runs: prev_epoch copies (never aliases), EMA arithmetic and schedule, BN modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plugins.distill.updaters import EMA, cosine_momentum
from tiny_runs import compose_run


def flat(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def bn_stats(net):
    return torch.cat([torch.cat([m.running_mean, m.running_var]) for m in net.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)])


def test_prev_epoch_teacher_is_a_copy_not_an_alias(tmp_path):
    run = compose_run(tmp_path, "updater=prev_epoch", "train.epochs=2", "student.alpha=0.5", "evaluator=[]")
    batches = list(run.batches())
    for index in batches:  # epoch 1
        run.train_step(index)
    run.clock.epoch = 1
    assert not torch.equal(flat(run.teacher), flat(run.student))
    run.updater.epoch_end(run)
    assert torch.equal(flat(run.teacher), flat(run.student))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(run.teacher.parameters(), run.student.parameters()))
    before = flat(run.teacher).clone()
    run.train_step(batches[0])  # the next step moves the student only
    assert not torch.equal(flat(run.teacher), flat(run.student))
    assert torch.equal(flat(run.teacher), before)
    assert run.updater.frozen is False


def test_ema_update_is_the_moving_average():
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    t0, s0 = flat(teacher).clone(), flat(student).clone()
    EMA(teacher, student).update(0.9)
    assert torch.allclose(flat(teacher), 0.9 * t0 + 0.1 * s0)
    assert torch.equal(flat(student), s0)
    assert cosine_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)


def test_ema_teacher_follows_the_student_in_a_run(tmp_path):
    run = compose_run(tmp_path, "updater=ema", "updater.momentum=0.5", "updater.final_momentum=0.5",
                      "student.alpha=0.5", "evaluator=[]")
    index = next(run.batches())
    t0 = flat(run.teacher).clone()
    run.train_step(index)
    assert torch.allclose(flat(run.teacher), 0.5 * t0 + 0.5 * flat(run.student), atol=1e-6)


@pytest.mark.parametrize("mode", ["eval", "from_data", "from_student"])
def test_teacher_bn_modes(mode, tmp_path):
    run = compose_run(tmp_path, f"updater.bn_mode={mode}", "evaluator=[]")
    stats0 = bn_stats(run.teacher).clone()
    assert run.teacher.training is (mode == "from_data")
    run.train_step(next(run.batches()))
    after = bn_stats(run.teacher)
    if mode == "eval":
        assert torch.equal(after, stats0) and run.teacher_frozen
    elif mode == "from_data":
        assert not torch.equal(after, stats0) and not run.teacher_frozen
    else:
        assert torch.equal(after, bn_stats(run.student)) and not run.teacher_frozen
