"""Teacher caching is exact: the same losses with and without it, and it switches itself off where it cannot be."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from framework._config.compose import compose
from framework._run.loop import Run


def _losses(tmp_path, name, *overrides):
    cfg = compose(TINY + ["data=digits", "data.train_size=256", "data.test_size=64", "train.epochs=3",
                          "train.log_every=1", "evaluator=[]", "train.precision=fp32", *overrides])
    run = Run(cfg, tmp_path / name).setup()
    summary = run.fit()
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if r["kind"] == "train"], summary, run


def test_cached_teacher_gives_the_same_losses(tmp_path):
    cached, summary, run = _losses(tmp_path, "cached", "objective.cache_teacher=true")
    plain, plain_summary, _ = _losses(tmp_path, "plain", "objective.cache_teacher=false")
    assert summary["teacher_cache"] == "on" and plain_summary["teacher_cache"] == "off"
    assert len(cached) == len(plain) == 12
    assert torch.allclose(torch.tensor(cached), torch.tensor(plain), rtol=1e-6, atol=1e-7)
    assert bool(run.objective.cache.filled[0].all()) and run.objective.cache.complete == [True]
    # once every image is stored, a step neither runs the teacher's encoder nor looks at the fill mask
    run.teacher.encoder.forward = None
    run.objective.cache.filled = None
    run.train_step(next(run.batches()))


def test_cache_refuses_where_it_would_not_be_exact(tmp_path):
    from plugins.distill.distillation import TeacherCache

    cfg = compose(TINY + ["data=digits", "data.train_size=128", "data.test_size=32"])
    run = Run(cfg, tmp_path / "r").setup()
    assert TeacherCache.unusable(run) is None
    run.teacher.train()
    assert "train mode" in TeacherCache.unusable(run)
    run.teacher.eval()
    run.augment.deterministic = False
    assert "random" in TeacherCache.unusable(run)


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones(tmp_path):
    eager, _, _ = _losses(tmp_path, "eager", "train.epochs=1")
    compiled, _, run = _losses(tmp_path, "compiled", "train.epochs=1", "train.compile=true")
    assert torch.allclose(torch.tensor(eager), torch.tensor(compiled), rtol=1e-4, atol=1e-5)
    assert "encoder.conv1.0.weight" in dict(run.student.named_parameters())  # names unchanged by compile
