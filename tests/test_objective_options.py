"""Distillation options: crop pairing, centering, temperature schedules, losses, and the optimiser's last-layer
freezing, gradient clipping and weight-decay schedule — numbers users rely on."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framework._base.errors import RtlabError
from framework._nets.models import forward_views
from plugins.distill.distillation import Centering, view_pairs
from plugins.distill.losses import CrossEntropy, MeanSquaredError, MSEOptions, PredictionEntropy, TemperatureOptions
from plugins.training.optimizers import cosine_value
from tiny_runs import compose_run


def test_view_pairs():
    assert view_pairs("same", 2, 4) == [(0, 0), (1, 1)]
    assert view_pairs("opposite", 2, 4) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    assert len(view_pairs("all", 2, 4)) == 8
    with pytest.raises(RtlabError, match="pairs nothing"):
        view_pairs("opposite", 1, 1)
    with pytest.raises(RtlabError, match="same, opposite, all"):
        view_pairs("diagonal", 1, 1)


def test_centering_subtracts_the_running_mean_then_updates_it():
    c = Centering(0.9)
    a, b = torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, 5.0]])
    out = c([a, b])
    assert torch.equal(out[0], a)  # the centre starts at 0
    c.update([a, b])
    assert torch.allclose(c.center, 0.1 * torch.tensor([2.0, 4.0]))
    assert torch.allclose(c([a])[0], a - 0.1 * torch.tensor([2.0, 4.0]))


def test_teacher_temperature_warm_up():
    loss = CrossEntropy(TemperatureOptions(teacher_temp=0.07, teacher_temp_start=0.04,
                                           teacher_temp_warmup_epochs=30, student_temp=0.1))
    for epoch, temp in ((0, 0.04), (15, 0.055), (30, 0.07), (90, 0.07)):
        loss.set_epoch(epoch)
        assert loss.teacher_temp == pytest.approx(temp)


def test_losses():
    torch.manual_seed(0)
    s, t = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    ce, logs = CrossEntropy(TemperatureOptions(teacher_temp=0.5))(s, t)
    p = F.softmax(t / 0.5, -1)
    assert float(ce.detach()) == pytest.approx(float(-(p * F.log_softmax(s, -1)).sum(-1).mean().detach()), rel=1e-5)
    ce.backward()  # the CE gradient is the KL gradient: (q − p)/B
    assert torch.allclose(s.grad, (F.softmax(s, -1) - p).detach() / 8, atol=1e-6)
    assert float(logs["kl"]) == pytest.approx(float(ce.detach() - logs["teacher_entropy"]), abs=1e-5)
    mse, _ = MeanSquaredError(MSEOptions())(s, s.detach())
    assert float(mse.detach()) == 0.0
    mse_p, _ = MeanSquaredError(MSEOptions(space="probabilities"))(s, t)
    assert float(mse_p.detach()) == pytest.approx(float(((F.softmax(s, -1) - F.softmax(t, -1)) ** 2).mean().detach()), rel=1e-5)
    h, _ = PredictionEntropy(TemperatureOptions())(torch.zeros(8, 16), t)
    assert float(h) == pytest.approx(math.log(16), rel=1e-6)
    with pytest.raises(RtlabError):
        MeanSquaredError(MSEOptions(space="bits"))


def test_views_of_one_size_share_a_forward_pass():
    calls = []
    net = nn.Flatten()
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    views = [torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)]
    outs = forward_views(net, views)
    assert calls == [4, 4]
    assert [tuple(o.shape) for o in outs] == [(2, 16), (2, 16), (2, 4), (2, 4)]
    assert torch.equal(outs[1], torch.ones(2, 16))


def test_multicrop_distillation_step(tmp_path):
    """DINO-style: opposite pairing over 2 global + 2 local crops, centering, a warm-up; the loss is finite."""
    run = compose_run(tmp_path, "augment=multicrop", "augment.local_views=2", "objective.pairing=opposite",
                      "objective.center_momentum=0.9", "loss.teacher_temp=0.07", "loss.teacher_temp_start=0.04",
                      "loss.teacher_temp_warmup_epochs=1", "loss.student_temp=0.1", "evaluator=[]")
    logs = run.train_step(next(run.batches()))
    assert math.isfinite(float(logs["train/loss"])) and float(logs["train/kl"]) > 0
    assert run.objective.centering.center.abs().sum() > 0


def test_last_layer_freeze_clipping_and_weight_decay_schedule(tmp_path):
    run = compose_run(tmp_path, "optimizer.freeze_last_layer_epochs=1", "optimizer.clip_grad=0.001",
                      "optimizer.weight_decay=0.04", "optimizer.final_weight_decay=0.4",
                      "optimizer.decay_bias_and_norm=false", "student.alpha=0.5", "train.epochs=2", "evaluator=[]")
    last0 = run.student.head.last.weight.detach().clone()
    other0 = run.student.head.mlp[0].weight.detach().clone()
    logs = run.train_step(next(run.batches()))
    assert torch.equal(run.student.head.last.weight, last0)  # frozen in epoch 1
    assert not torch.equal(run.student.head.mlp[0].weight, other0)
    assert float(logs["train/grad_norm"]) > 0.001  # the norm before clipping
    decayed = [g for g in run.optimizer.param_groups if g["decayed"]]
    plain = [g for g in run.optimizer.param_groups if not g["decayed"]]
    assert all(p.ndim > 1 for p in decayed[0]["params"]) and all(p.ndim <= 1 for p in plain[0]["params"])
    assert plain[0]["weight_decay"] == 0.0
    run.clock.step = run.steps_per_epoch  # epoch 2: the last layer trains
    run.train_step(next(run.batches()))
    assert not torch.equal(run.student.head.last.weight, last0)
    assert decayed[0]["weight_decay"] == pytest.approx(cosine_value(0.04, 0.4, run.steps_per_epoch,
                                                                    run.total_steps))
    assert cosine_value(0.04, 0.4, 0, 10) == pytest.approx(0.04) and cosine_value(0.04, 0.4, 10, 10) == 0.4


def test_clipping_bounds_the_update(tmp_path):
    run = compose_run(tmp_path, "optimizer.clip_grad=1e-4", "optimizer=sgd", "optimizer.momentum=0",
                      "optimizer.weight_decay=0", "optimizer.lr=1.0", "student.alpha=0.5", "evaluator=[]")
    before = torch.cat([p.detach().flatten() for p in run.student.parameters()])
    run.train_step(next(run.batches()))
    after = torch.cat([p.detach().flatten() for p in run.student.parameters()])
    assert float((after - before).norm()) == pytest.approx(1e-4, rel=1e-3)  # lr 1 x clipped gradient


def test_centre_is_saved_and_restored_with_the_training_state(tmp_path):
    """The centre is the objective's state: written to checkpoints/last and restored by the state protocol itself
    (on every rank), not by a hook."""
    from framework._nets.checkpoint import load_checkpoint
    from framework._run.state import restore

    run = compose_run(tmp_path / "a", "objective.center_momentum=0.9", "evaluator=[]")
    run.train_step(next(run.batches()))
    tensors, meta = load_checkpoint(run.save_state())
    assert torch.equal(tensors["component.objective.center"], run.objective.centering.center)
    other = compose_run(tmp_path / "b", "objective.center_momentum=0.9", "evaluator=[]")
    restore(other, tensors, meta, "test")
    assert torch.equal(other.objective.centering.center, run.objective.centering.center)


def test_kl_diagnostics_only_on_logged_steps(tmp_path):
    """The KL and teacher entropy are computed on steps whose metrics are logged; the loss is the same either way,
    and the logged KL averages over the steps that computed it."""
    s, t = torch.randn(8, 64), torch.randn(8, 64)
    for loss in (CrossEntropy(TemperatureOptions()), MeanSquaredError(MSEOptions()),
                 PredictionEntropy(TemperatureOptions())):
        full, logs = loss(s, t)
        quiet, none = loss(s, t, diagnose=False)
        assert torch.equal(full, quiet) and set(logs) == {"kl", "teacher_entropy"} and none == {}
    run = compose_run(tmp_path / "run", "train.log_every=3", "evaluator=[]")
    batches = run.batches()
    run.logging_step = False
    assert "train/kl" not in run.train_step(next(batches)) and run.step == 1
    run.logging_step = True
    logs = run.train_step(next(batches))
    assert float(logs["train/kl"]) > 0 and "train/teacher_entropy" in logs
    fit = compose_run(tmp_path / "fit", "train.log_every=3", "train.epochs=2", "evaluator=[]")
    fit.fit()
    rows = [json.loads(line) for line in (tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/kl" in r]
    assert [r["step"] for r in steps] == [3, 4, 6, 8]  # multiples of 3 and each epoch's last (4 steps per epoch)
    assert all(r["train/kl"] > 0 for r in steps)
