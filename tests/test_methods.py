"""Every SSL method trains a short seeded run on Fashion-MNIST without NaN, and its student's k-NN accuracy beats
the same architecture at its random initialisation; BYOL (EMA target + predictor) resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch

from tiny_runs import FAST, compose_run, plugin_manager, preempted_then_resumed

# 1,024 Fashion-MNIST training images (2,000 test images: k-NN noise below the margins), 96 steps, a small ResNet with timm's stem (7x7 maps), one thread
SHORT = [
    "backbone=test_resnet", "backbone.stem=timm", "data=fashion_mnist", "data.train_size=1024",
    "data.test_size=2000", "train.batch_size=64", "train.epochs=6", "train.precision=fp32", "train.threads=1",
    "optimizer.lr=2e-3", "head.hidden_dims=[128]", "head.out_dim=64", "evaluator=[knn]", "eval.every=0",
    "eval.before=true", "eval.targets=[teacher,teacher_bn,student]", "progress.enabled=false",
    "tensorboard.enabled=false", "checkpoint.final=false", "train.seed=3",
]
# small images: no blur and crops of at least a quarter of the image (SimCLR's CIFAR-10 convention)
SMALL_VIEWS = ["augment.blur=[0,0,0]", "augment.global_scale=[0.25,1]"]
SIZED = {
    "random_teacher": [],
    "dino": [*SMALL_VIEWS, "augment.local_views=2", "head.bottleneck_dim=32", "head.out_dim=256",
             "loss.teacher_temp_warmup_epochs=1"],
    # momentum SGD, closest to BYOL's LARS (with AdamW it stays below its init in 96 steps)
    "byol": [*SMALL_VIEWS, "objective.predictor_hidden_dims=[128]", "optimizer=sgd", "optimizer.lr=0.05",
             "optimizer.weight_decay=1e-4"],
    # SimSiam's optimiser (SGD, lr 0.05 · batch/256 · 4) and a wider projector (its predictor: a 4x bottleneck)
    "simsiam": [*SMALL_VIEWS, "optimizer=sgd", "optimizer.lr=0.05", "optimizer.weight_decay=1e-4",
                "head.hidden_dims=[512]", "head.out_dim=512", "objective.predictor_hidden_dims=[128]"],
    "simclr": SMALL_VIEWS,
    # redundancy reduction needs a wide projector
    "barlow_twins": [*SMALL_VIEWS, "head.hidden_dims=[512]", "head.out_dim=512"],
    "vicreg": [*SMALL_VIEWS, "head.hidden_dims=[512]", "head.out_dim=512"],
}


def test_every_builtin_method_is_registered():
    from plugins.methods import method_names

    assert set(SIZED) <= set(method_names(plugin_manager().registry))


@pytest.mark.parametrize("method", sorted(SIZED))
def test_method_student_beats_its_random_init(method, tmp_path):
    run = compose_run(tmp_path, f"method={method}", *SIZED[method], base=SHORT)
    try:
        summary = run.fit()
    finally:
        run.release()
    assert summary["steps"] == 96
    losses = [r["train/loss"] for r in map(__import__("json").loads, (tmp_path / "metrics.jsonl").open())
              if r.get("kind") == "train"]
    assert losses and all(math.isfinite(v) for v in losses)
    init = run.history[0]
    assert init["epoch"] == 0
    # the random-init encoder of the same architecture: the student before training (= the teacher at epoch 0,
    # which every method starts from), with its initial BN statistics and with BN re-estimated on the data
    baseline = max(init["knn/student"], init["knn/teacher"], init["knn/teacher_bn"])
    final = summary["metrics"]["knn/student"]
    assert final > baseline, f"{method}: student k-NN {final:.3f} <= random init {baseline:.3f}"


def test_byol_resumes_exactly(tmp_path):
    """EMA target, predictor (and its optimiser state), momentum schedule and two-view augmentation continue
    bit-exactly from a training state saved mid-epoch (pre-empted after step 5, then resumed)."""
    byol = ["method=byol", "head.hidden_dims=[32]", "head.out_dim=16", "objective.predictor_hidden_dims=[32]",
            "updater.momentum=0.9", "train.epochs=2", "train.state_steps=1", "train.log_every=1", "evaluator=[]",
            "train.seed=5", "train.deterministic=true"]
    base = [o for o in FAST if not o.startswith("head.")]
    ref = compose_run(tmp_path / "ref", *byol, base=base)
    ref.fit()
    ref.release()

    resumed = preempted_then_resumed(tmp_path / "run", 5, *byol, base=base)  # 4 steps per epoch: mid-epoch 2
    assert resumed.step == 4
    # the predictor was restored, not re-initialised: it differs from a fresh one of the same seed
    fresh = compose_run(tmp_path / "fresh", *byol, base=base)
    fresh.release()
    assert not torch.equal(next(resumed.objective.predictor.parameters()), next(fresh.objective.predictor.parameters()))
    resumed.fit()
    resumed.release()
    assert resumed.step == ref.step == 8
    for part in ("student", "teacher"):
        a, b = getattr(ref, part).state_dict(), getattr(resumed, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    a, b = ref.objective.state_dict(), resumed.objective.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("preset", ["compare_cpu", "compare_cifar10"])
def test_compare_presets_compose_for_every_method(preset):
    """Each method of a comparison preset composes with the preset and its per-method overrides."""
    from framework._config.compose import check_config, compose

    registry = plugin_manager().registry
    cfg = compose([f"experiment={preset}"], registry)
    for method in sorted(SIZED):
        extra = list(cfg.compare.overrides.get(method, []))
        cell = compose([f"experiment={preset}", f"method={method}", *extra], registry)
        check_config(cell, registry)
        assert cell.objective.name == registry.preset("method", method).choices["objective"]
