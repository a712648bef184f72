"""AdamW's fused CPU kernel: used by runs on the CPU, and equal to the foreach kernel to within float32 rounding."""

from __future__ import annotations

import pytest
import torch

from plugins.training.optimizers import cpu_fused_adamw_available
from tiny_runs import compose_run

needs_fused = pytest.mark.skipif(not cpu_fused_adamw_available(), reason="this torch has no fused CPU AdamW")


def adamw_trajectory(kind: str, grads: list[list[torch.Tensor]], init: list[torch.Tensor], **hyper):
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = torch.optim.AdamW(params, **hyper, **{kind: True})
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


@needs_fused
@pytest.mark.parametrize("hyper", [dict(lr=1e-3, weight_decay=0.0), dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6,
                                                                          weight_decay=0.05)])
def test_fused_cpu_adamw_equals_foreach_to_float32_rounding(tmp_path, hyper):
    """Ten updates of a real student (a tiny ResNet + DINO head) with its own distillation gradients, scaled down
    to the denormal range on some steps: every weight agrees to within 2.5 float32 roundings per update (of its
    value, or of the lr for weights near zero; the two kernels order their operations differently, measured:
    1.95 after one update, 10.7 after ten)."""
    run = compose_run(tmp_path, "evaluator=[]", "student.alpha=0.5")
    params = [p for p in run.student.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in params]
    x = run.prepare(run.data.train.images[:64])
    grads = []
    for scale in (1.0, 1.0, 1e-3, 1e-8, 1e-20, 1.0, 1e-30, 1.0, 1.0, 0.0):  # down to the denormal range
        run.student.zero_grad(set_to_none=True)
        with torch.no_grad():
            target = torch.softmax(run.teacher(x), -1)
        loss = -(target * torch.log_softmax(run.student(x), -1)).sum(-1).mean()
        loss.backward()
        grads.append([p.grad.detach() * scale for p in params])
    a, opt_a = adamw_trajectory("foreach", grads, init, **hyper)
    b, opt_b = adamw_trajectory("fused", grads, init, **hyper)
    eps = torch.finfo(torch.float32).eps
    moved = 0.0
    for x_a, x_b, x0 in zip(a, b, init):
        scale = x_a.abs().clamp_min(hyper["lr"])
        assert ((x_a - x_b).abs() <= 2.5 * len(grads) * eps * scale).all()
        moved = max(moved, float((x_a - x0).abs().max()))
    assert moved > hyper["lr"]  # the trajectories really moved, so agreeing was not trivial
    for p_a, p_b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        torch.testing.assert_close(opt_a.state[p_a]["exp_avg_sq"], opt_b.state[p_b]["exp_avg_sq"], rtol=1e-6,
                                   atol=0.0)


@needs_fused
def test_cpu_runs_use_fused_adamw_and_foreach_sgd(tmp_path):
    adamw = compose_run(tmp_path / "adamw", "evaluator=[]")
    assert adamw.optimizer.defaults["fused"] is True and not adamw.optimizer.defaults.get("foreach")
    sgd = compose_run(tmp_path / "sgd", "evaluator=[]", "optimizer=sgd")
    assert sgd.optimizer.defaults["foreach"] is True and not sgd.optimizer.defaults.get("fused")
    summary = adamw.fit()
    assert summary["steps"] > 0 and summary["student_distance_from_init"] > 0
