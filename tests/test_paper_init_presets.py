"""The paper's teacher-column presets (paper_table1_init: Tables 1 and 3; paper_table5_init: Table 5): evaluations
of random teachers at full CIFAR-10 size, every swept network with its expectation, seeds following train.seed, and
the metrics the expectations name are what such a run reports."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from framework._config.compose import compose, config_dir
from tiny_runs import FAST, compose_run, plugin_manager

PRESETS = ["paper_table1_init", "paper_table5_init"]


def _cfg(name, *overrides):
    return compose([f"experiment={name}", *overrides], plugin_manager().registry)


def _swept(name, key):
    params = OmegaConf.load(config_dir() / "experiment" / f"{name}.yaml").hydra.sweeper.params
    return str(params[key]).split(",")


@pytest.mark.parametrize("name", PRESETS)
def test_the_preset_is_an_evaluation_at_full_size_seeded_by_train_seed(name):
    cfg = _cfg(name, "train.seed=2")
    assert cfg.train.epochs == 0 and cfg.eval.before and "teacher" in cfg.eval.targets
    assert cfg.data.train_size is None and cfg.data.test_size is None and "cifar10" in cfg.data.path
    assert cfg.teacher.seed == 2 and cfg.eval.seed == 2  # a seed draws a new teacher and a new probe
    assert cfg.backbone.init == "paper" and cfg.backbone.stem == "cifar"
    for e in cfg.expect:  # measured at full size without training: other budgets are skipped, not failed
        assert dict(e.budget) == {"train.epochs": 0, "data.train_size": None}
        assert 0 < e.tolerance <= 0.025 and 0.1 < e.value < 0.5


def test_every_swept_network_has_the_papers_columns():
    t1 = _cfg("paper_table1_init")
    assert set(t1.eval.targets) == {"teacher", "input"} and _swept("paper_table1_init", "train.seed") == ["0", "1", "2"]
    cells = {(e.metric, e.where.get("backbone.name")) for e in t1.expect}
    assert cells == {(f"{p}/teacher", b) for p in ("linear", "knn") for b in _swept("paper_table1_init", "backbone")
                     } | {("linear/input", None), ("knn/input", None)}
    t5 = _cfg("paper_table5_init")
    assert list(t5.eval.targets) == ["teacher"]
    swept = _swept("paper_table5_init", "backbone")
    assert len(swept) == 13 and [e.where["backbone.name"] for e in t5.expect] == swept
    assert {e.metric for e in t5.expect} == {"linear/teacher"}
    # the same value for a network in both presets (Table 5 repeats Table 1's rows)
    t1_linear = {e.where["backbone.name"]: e.value for e in t1.expect if e.metric == "linear/teacher"}
    for e in t5.expect:
        assert t1_linear.get(e.where["backbone.name"], e.value) == e.value


def test_the_vit_teachers_get_the_papers_patch_size():
    """Patch 8 at 32 px (the size the paper states): 16 patches; 12 blocks of their own."""
    from framework._nets.models import create_backbone

    cfg = _cfg("paper_table5_init", "backbone=vit_tiny_patch16_224")
    enc, dim = create_backbone(plugin_manager().registry, cfg.backbone, 3, (32, 32))
    assert dim == 192 and tuple(enc.patch_embed.patch_size) == (8, 8) and enc.patch_embed.num_patches == 16
    assert len(enc.blocks) == 12 and enc.blocks[0].attn.qkv.weight is not enc.blocks[1].attn.qkv.weight


@pytest.mark.parametrize("name", PRESETS)
def test_a_run_reports_every_metric_its_expectations_name(name, tmp_path):
    """One evaluation-only cell on tiny data: the expectations' metrics are in its summary, and at this budget
    (data.train_size set) rtlab verify skips every expectation instead of failing it."""
    from plugins.commands.verify import check

    overrides = [o for o in FAST if not o.startswith(("train.epochs", "eval.before"))]
    run = compose_run(tmp_path, f"experiment={name}", *overrides, "data.train_size=120", "data.test_size=60",
                      "evaluator=[knn,linear]", base=[])
    summary = run.fit()
    assert summary["steps"] == 0
    metrics = summary["metrics"]
    assert {e.metric for e in run.cfg.expect} <= set(metrics)
    lines, failing, applied = check(list(run.cfg.expect), run.cfg, [({}, metrics)])
    assert applied == 0 and not failing and all(line.startswith("SKIP ") for line in lines)
    assert "measured at data.train_size=None" in lines[0]
