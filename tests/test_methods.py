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
    "moco_v2": [*SMALL_VIEWS, "objective.queue_size=1024"],
    "moco_v3": [*SMALL_VIEWS, "objective.predictor_hidden_dims=[128]"],
    "nnclr": [*SMALL_VIEWS, "objective.predictor_hidden_dims=[128]", "objective.support_size=1024"],
    "swav": [*SMALL_VIEWS, "augment.local_views=2", "head.bottleneck_dim=64", "head.out_dim=100",
             "objective.queue_length=512", "objective.queue_start_epoch=1"],
    "dcl": SMALL_VIEWS,
    "dclw": SMALL_VIEWS,
    "tico": SMALL_VIEWS,
    "wmse": [*SMALL_VIEWS, "head.out_dim=16", "objective.w_size=64"],
    "mmcr": [*SMALL_VIEWS, "augment.global_views=4", "head.hidden_dims=[512]", "head.out_dim=128"],
}
ALL_METHODS = list(SIZED)


def test_every_builtin_method_is_registered():
    from plugins.methods import method_names

    assert set(SIZED) <= set(method_names(plugin_manager().registry))


# the methods added with the reference checks: their 96-step runs are slow tests (each also has a reference, a
# resume and, where it has global statistics, a two-process test in the default suite)
NEWER = {"moco_v2", "moco_v3", "nnclr", "swav", "dcl", "dclw", "tico", "wmse", "mmcr"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in NEWER else m
                                    for m in sorted(SIZED)])
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


# tiny heads (and queues that wrap within the run) for the resume test: 4 steps of 64 images per epoch
TINY = {
    "random_teacher": ["head.hidden_dims=[32]", "head.bottleneck_dim=16", "head.out_dim=64"],
    "dino": ["head.hidden_dims=[32]", "head.bottleneck_dim=16", "head.out_dim=64", "augment.local_views=2",
             "objective.cache_teacher=false"],
    "swav": ["head.hidden_dims=[32]", "head.bottleneck_dim=16", "head.out_dim=20", "augment.local_views=2",
             "objective.queue_length=96", "objective.queue_start_epoch=0"],
    "moco_v2": ["objective.queue_size=100"],
    "nnclr": ["objective.support_size=100", "objective.predictor_hidden_dims=[32]"],
    "wmse": ["head.out_dim=8", "objective.w_size=32"],
    "mmcr": ["augment.global_views=3"],
}
PREDICTOR = ["objective.predictor_hidden_dims=[32]"]
for _m in ("byol", "simsiam", "moco_v3"):
    TINY[_m] = PREDICTOR


def _packed(component) -> dict:
    """A component's state as the training state holds it: tensors by name, and the rest as JSON."""
    from framework._run.state import pack

    tensors: dict = {}
    meta = pack(component.state_dict(), "state", tensors)
    return {"meta": meta, **tensors}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                        for k in a)


@pytest.mark.parametrize("method", sorted(ALL_METHODS))
def test_method_resumes_exactly(method, tmp_path):
    """Networks, objective state (predictors, queues, support sets, prototypes, centres, running covariances,
    whitening streams), optimiser, momentum schedule and views continue bit-exactly from a training state saved
    mid-epoch (pre-empted after step 5, then resumed): a state not restored (a queue or predictor starting over, a
    stream re-seeded) ends elsewhere."""
    head = [] if any(o.startswith("head.") for o in TINY.get(method, [])) else ["head.hidden_dims=[32]",
                                                                                "head.out_dim=16"]
    overrides = [f"method={method}", *head, *TINY.get(method, []), "train.epochs=2", "train.state_steps=1",
                 "train.log_every=1", "evaluator=[]", "train.seed=5", "train.deterministic=true", "train.threads=1"]
    if method in ("byol", "moco_v3", "tico", "moco_v2", "dino", "mmcr"):
        overrides.append("updater.momentum=0.9")  # the target moves visibly within 8 steps
    base = [o for o in FAST if not o.startswith("head.")]
    ref = compose_run(tmp_path / "ref", *overrides, base=base)
    ref.fit()
    ref.release()

    resumed = preempted_then_resumed(tmp_path / "run", 5, *overrides, base=base)  # 4 steps per epoch: mid-epoch 2
    assert resumed.step == 4
    state = _packed(resumed.objective) if hasattr(resumed.objective, "state_dict") else {}
    resumed.fit()
    resumed.release()
    assert resumed.step == ref.step == 8
    for part in ("student", "teacher"):
        a, b = getattr(ref, part).state_dict(), getattr(resumed, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    if state:
        assert _equal(_packed(ref.objective), _packed(resumed.objective))


@pytest.mark.parametrize("preset", ["compare_cpu", "compare_cifar10", "compare_cifar10_cpu"])
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
