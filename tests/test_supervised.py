"""Supervised training through the ordinary run loop: the objective, its augmentation, its checkpoints, its starts."""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import SUP

from framework._nets.checkpoint import load_checkpoint
from framework._config.compose import compose
from framework._base.errors import RtlabError
from framework._base.registry import node_class
from framework._run.loop import Run, run_training
from plugins.training.supervised import classifier_state


def flip_crop(registry, **options):
    """The registered ``flip_crop`` augmentation (whichever plugin provides it) as a function of images."""
    comp = registry.get("augment", "flip_crop")
    augment = registry.build("augment", node_class(comp)(**options))
    return lambda images, gen: augment.views(images, gen)[0]


def test_flip_crop_draws_flips_and_padded_crops_per_image(pm):
    images = torch.rand(64, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(flip_crop(pm.registry, pad=0, flip=1.0)(images, gen), images.flip(-1))
    out = flip_crop(pm.registry, pad=2, flip=0.0)(images, gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for b in range(len(images)):  # every output is one 8x8 window of its own padded image
        hits = [(i, j) for i in range(5) for j in range(5) if torch.equal(out[b], padded[b, :, i:i + 8, j:j + 8])]
        assert hits, f"image {b} is not a crop of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets are drawn per image, not per batch
    mixed = flip_crop(pm.registry, pad=0, flip=0.5)(images, gen)
    n_flipped = sum(torch.equal(m, i.flip(-1)) for m, i in zip(mixed, images))
    assert 10 < n_flipped < 54


def test_supervised_run_learns_and_a_checkpoint_restarts_it_exactly(pm, tmp_path):
    summary = run_training(compose(SUP, pm.registry), tmp_path / "sup", pm)
    accuracy = summary["metrics"]["classifier/student"]
    assert accuracy > 0.5  # 10 classes: chance is 0.1
    tensors, meta = load_checkpoint(tmp_path / "sup")  # a run folder names its final checkpoint
    state = classifier_state(tensors, "final")
    assert state["classifier.weight"].shape == (10, 96) and meta["classifier"]["classes"] == 10
    # starting from epoch l of a supervised run: its encoder and its classifier, evaluated before any step
    path = tmp_path / "sup" / "checkpoints" / "final"
    again = run_training(compose([*SUP, "student=checkpoint", f"student.path={path}",
                                  f"objective.classifier_from={path}", "train.epochs=0", "eval.before=true"],
                                 pm.registry), tmp_path / "again", pm)
    assert again["metrics"]["classifier/student"] == accuracy


def test_student_from_a_distilled_checkpoint_gets_its_encoder_and_a_fresh_classifier(pm, tmp_path):
    run_training(compose([*SUP, "train.epochs=1"], pm.registry), tmp_path / "a", pm)
    tensors, _ = load_checkpoint(tmp_path / "a")
    run = Run(compose([*SUP, "student=checkpoint", f"student.path={tmp_path / 'a'}", "student.weights=teacher"],
                      pm.registry), tmp_path / "b", pm).setup()
    for key, value in run.student.encoder.state_dict().items():
        assert torch.equal(value.cpu(), tensors[f"teacher.encoder.{key}"]), key
    # the classifier is the seeded fresh one, not the checkpoint's
    assert not torch.equal(run.objective.classifier.weight.detach().cpu(), tensors["classifier.weight"])


def test_bad_starts_fail_with_one_line_errors(pm, tmp_path):
    run_training(compose([*SUP, "train.epochs=1", "objective=distillation", "head=dino", "head.out_dim=16",
                          "head.hidden_dims=[]", "head.bottleneck_dim=8", "evaluator=[]"], pm.registry),
                 tmp_path / "distilled", pm)
    with pytest.raises(RtlabError, match="has no classifier"):
        run_training(compose([*SUP, f"objective.classifier_from={tmp_path / 'distilled'}"], pm.registry),
                     tmp_path / "x", pm)
    with pytest.raises(RtlabError, match="student.path"):
        run_training(compose([*SUP, "student=checkpoint"], pm.registry), tmp_path / "y", pm)
    with pytest.raises(RtlabError, match="another architecture"):
        run_training(compose([*SUP, "student=checkpoint", f"student.path={tmp_path / 'distilled'}",
                              "backbone=resnet10t"], pm.registry), tmp_path / "z", pm)
