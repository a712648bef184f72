"""Data studies: Gaussian-noise inputs, the fixed sample budget, transfer probing (eval.datasets), and the hub
presets' class counts and normalisation."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from framework._config.compose import config_dir, dataset_node
from framework._base.errors import RtlabError
from plugins.data.gaussian_inputs import GaussianOptions, GaussianSource
from tiny_runs import compose_run, fit, plugin_manager


def test_gaussian_inputs_are_normal_after_normalisation():
    import numpy as np
    import torch

    from framework._data.data import load_image_data

    opts = GaussianOptions(sigma=2.0, channels=1, image_size=12, train_size=600, test_size=50, seed=3)
    _, node = dataset_node(plugin_manager().registry, {"name": "gaussian", "sigma": 2.0, "channels": 1,
                                                       "image_size": 12, "train_size": 600, "test_size": 50,
                                                       "seed": 3})
    data = load_image_data(plugin_manager().registry, node)
    assert tuple(data.train.images.shape) == (600, 1, 12, 12) and len(data.test) == 50
    assert not data.train.labelled and data.num_classes == 0
    x = data.normalizer("cpu")(data.train.images)
    assert abs(float(x.mean())) < 0.02 and float(x.std()) == pytest.approx(2.0, rel=0.02)
    assert float(x.abs().max()) <= 4 * 2.0 + 1e-4
    again = GaussianSource(opts).load()["train"]["image"]
    assert np.array_equal(np.asarray(again), data.train.images.numpy())  # the seed fixes the noise
    assert torch.is_tensor(x)


def test_distilling_noise_and_probing_real_data(tmp_path):
    summary = fit(tmp_path, "data=gaussian", "data.channels=1", "data.image_size=8", "data.train_size=128",
                  "data.test_size=32", "eval.datasets=[digits]", "evaluator=[knn]", "train.max_steps=2")
    keys = set(summary["metrics"])
    assert {"knn/student@digits", "knn/teacher@digits", "knn/input@digits"} <= keys
    assert not any(k.startswith("knn/") and "@" not in k for k in keys)  # the noise itself is not probed
    assert "knn/student@digits" in summary["best"] or summary["epochs"] == 1


def test_unlabelled_training_data_needs_a_probe_dataset(tmp_path):
    with pytest.raises(RtlabError, match="eval.datasets"):
        compose_run(tmp_path, "data=gaussian", "data.train_size=64", "data.test_size=16")


def test_transfer_probing_keys_and_resizing(tmp_path):
    """Distil on 8x8 digits; probe a 12x12 copy (an entry's own image_size) and the digits at their size."""
    summary = fit(tmp_path, "evaluator=[knn]", "train.max_steps=1",
                  "eval.datasets=[{preset:digits,key:digits12,image_size:12},{name:digits,train_size:200}]")
    m = summary["metrics"]
    assert {"knn/student", "knn/student@digits12", "knn/student@digits", "knn/input@digits12"} <= set(m)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("knn/student@digits12" in r for r in lines if r["kind"] == "eval")


def test_eval_dataset_errors(tmp_path):
    reg = plugin_manager().registry
    with pytest.raises(RtlabError, match="did you mean cifar10"):
        dataset_node(reg, "cifar11")
    with pytest.raises(RtlabError, match="twice"):
        compose_run(tmp_path, "eval.datasets=[digits,digits]")
    with pytest.raises(RtlabError, match="nothing to probe"):
        compose_run(tmp_path, "eval.train_data=false")


def test_sample_budget_sets_the_epochs(tmp_path):
    run = compose_run(tmp_path, "train.sample_budget=500", "data.train_size=128", "evaluator=[]")
    assert run.epochs == 3  # 500 // 128
    summary = run.fit()
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 2 and summary["sample_budget"] == 500
    with pytest.raises(RtlabError, match="sample_budget"):
        compose_run(tmp_path, "train.sample_budget=0")


@pytest.mark.parametrize("preset, path, classes, label, size", [
    ("cifar10", "uoft-cs/cifar10", 10, "label", None),
    ("cifar100", "uoft-cs/cifar100", 100, "fine_label", None),
    ("stl10", "tanganke/stl10", 10, "label", None),
    ("tinyimagenet", "zh-plus/tiny-imagenet", 200, "label", None),
])
def test_hub_presets(preset, path, classes, label, size):
    key, node = dataset_node(plugin_manager().registry, preset)
    assert key == preset and node.name == "hf" and node.path == path
    assert node.classes == classes and node.label_column == label
    assert len(node.mean) == 3 and len(node.std) == 3 and all(0.1 < s < 0.4 for s in node.std)
    assert OmegaConf.load(config_dir() / "data" / f"{preset}.yaml").defaults[0] == "hf"


def test_class_count_is_checked(imagefolder, tmp_path):
    from framework._data.data import load_image_data

    _, node = dataset_node(plugin_manager().registry, {"name": "hf", "path": str(imagefolder), "classes": 4})
    with pytest.raises(RtlabError, match="has 3 classes, not the expected data.classes=4"):
        load_image_data(plugin_manager().registry, node)
    node.classes = 3
    assert load_image_data(plugin_manager().registry, node).num_classes == 3
