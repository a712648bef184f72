"""Config composition: defaults, component options without YAML, presets, and one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework import hookimpl
from framework._config.compose import compose, config_dir
from framework._base.errors import RtlabError


def test_default_job_composes_to_the_documented_setting(pm):
    cfg = compose([], pm.registry)
    assert cfg.backbone.name == "resnet10t" and cfg.backbone.stem == "timm" and cfg.backbone.init == "paper"
    assert cfg.data.name == "fashion_mnist" and cfg.data.train_size == 10000 and cfg.data.test_size is None
    assert cfg.head.out_dim == 4096 and cfg.head.bottleneck_dim == 256 and list(cfg.head.hidden_dims) == [2048] * 2
    assert cfg.teacher.name == "random" and cfg.updater.name == "frozen"
    assert cfg.student.name == "interpolated" and cfg.student.alpha == 1e-10
    assert cfg.loss.teacher_temp == 1.0 and cfg.loss.student_temp == 1.0
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.0
    assert cfg.train.epochs == 20 and cfg.train.batch_size == 256 and cfg.eval.every == 5
    assert set(cfg.evaluator) == {"knn", "linear"} and cfg.evaluator.knn.k == 20


def test_component_options_are_overridable_by_name(pm):
    cfg = compose(["teacher.seed=3", "student=copy", "evaluator=[knn]", "evaluator.knn.k=5",
                   "backbone=vit_tiny_patch16_224", "backbone.patch_size=4", "data=digits"], pm.registry)
    assert cfg.teacher.seed == 3 and cfg.student.name == "copy"
    assert list(cfg.evaluator) == ["knn"] and cfg.evaluator.knn.k == 5
    assert cfg.backbone.name == "vit_tiny_patch16_224" and cfg.backbone.patch_size == 4


def test_third_party_component_gets_a_typed_config_node_without_yaml(pm):
    @dataclass
    class TemperedOptions:
        temperature: float = 0.5
        seed: int = 0

    class Plugin:
        @hookimpl
        def rtlab_register(self, registry):
            registry.add("teacher", "tempered", lambda o: o, TemperedOptions)

    pm.register(Plugin(), name="tempered-plugin")
    cfg = compose(["teacher=tempered", "teacher.temperature=0.25"], pm.registry)
    assert cfg.teacher.name == "tempered" and cfg.teacher.temperature == 0.25
    with pytest.raises(RtlabError, match=r"unknown config key 'teacher.temprature'; did you mean teacher.temperature"):
        compose(["teacher=tempered", "teacher.temprature=0.25"], pm.registry)
    with pytest.raises(RtlabError, match="invalid value for teacher.seed"):
        compose(["teacher=tempered", "teacher.seed=abc"], pm.registry)


@pytest.mark.parametrize("override, expected", [
    ("backbone=resnt18", "unknown backbone 'resnt18'; did you mean resnet18"),
    ("teacher=randm", "unknown teacher 'randm'; did you mean random"),
    ("evaluator=[knn,linar]", "unknown evaluator 'linar'; did you mean linear"),
    ("train.epochs=many", "invalid value for train.epochs: Value 'many' of type 'str' could not be converted"),
    ("train.epoch=3", "unknown config key 'train.epoch'; did you mean train.epochs?"),
    ("evaluator.knn.kk=3", "unknown config key 'evaluator.knn.kk'; did you mean evaluator.knn.k?"),
    ("backbone.kwargs={class_token:true}", "unknown config key 'backbone.kwargs.class_token'; backbone.kwargs takes "
     "new keys only with '+': '+backbone.kwargs.class_token=VALUE'"),
])
def test_bad_overrides_fail_with_one_line(pm, override, expected):
    with pytest.raises(RtlabError) as exc:
        compose([override], pm.registry)
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_every_experiment_preset_composes(pm):
    presets = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    assert "default" in presets and "paper_cifar10_resnet18" in presets
    for name in presets:
        cfg = compose([f"experiment={name}"], pm.registry)
        OmegaConf.resolve(cfg)
        assert cfg.name, name


def test_configs_ship_with_the_package():
    import configs

    assert (Path(configs.__file__).parent / "config.yaml").exists()


def test_user_config_dirs_add_presets(pm, tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nname: mine\ntrain:\n  epochs: 3\n")
    cfg = compose(["experiment=mine"], pm.registry, config_dirs=[str(tmp_path)])
    assert cfg.name == "mine" and cfg.train.epochs == 3
