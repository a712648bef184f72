"""Evaluation targets and batched feature extraction; evaluators receive the features, never the loop.

Targets (``eval.targets``):

* ``teacher`` — the teacher's encoder embedding;
* ``teacher_bn`` — the BN control: the teacher with its weights unchanged and only its BatchNorm running
  statistics re-estimated on the training images. The student trains in train mode, so its BN statistics move
  while an eval-mode random teacher keeps the identity statistics; only the gain beyond this control is the
  distillation effect. A teacher without BatchNorm is its own control;
* ``student`` — the student's encoder embedding;
* ``input`` — the flattened normalised pixels (the paper's "input" baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from framework import distributed
from framework.models import clone, has_batchnorm

if TYPE_CHECKING:
    from framework.run import Run

BUILTIN_TARGETS = ("teacher", "teacher_bn", "student", "input")


@dataclass
class Features:
    """Train and test embeddings of one target, with labels, on the run's device (float32)."""

    target: str
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    seed: int = 0

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


@torch.no_grad()
def extract(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, run: "Run") -> torch.Tensor:
    """``embed`` of every uint8 image, normalised and batched as in training, as float32 rows."""
    out = []
    bs = run.cfg.eval.batch_size
    share = distributed.shard(images)  # with torchrun: this process's rows; the others embed the rest
    for i in range(0, len(share), bs):
        x = run.prepare(share[i:i + bs])
        with run.autocast():
            out.append(embed(x).float())
    return distributed.gather_rows(torch.cat(out)) if out else torch.zeros(0, 0, device=images.device)


@torch.no_grad()
def bn_control(teacher: nn.Module, run: "Run") -> nn.Module:
    """A copy of ``teacher`` whose BatchNorm running statistics are re-estimated on the training images."""
    net = clone(teacher)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    images = run.data.train.images
    bs = run.cfg.eval.batch_size
    for i in range(0, len(images), bs):
        with run.autocast():
            net.encoder(run.prepare(images[i:i + bs]))
    return net.eval()


def target_embedder(run: "Run", target: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to embed normalised images for ``target``. Plugins add targets with
    ``run.extra_targets[name] = lambda run: embed_fn`` (re-evaluated at every evaluation)."""
    if target in run.extra_targets:
        return run.extra_targets[target](run)
    if target == "teacher":
        return run.teacher.embed
    if target == "student":
        return run.student.embed
    if target == "teacher_bn":
        net = bn_control(run.teacher, run) if has_batchnorm(run.teacher) else run.teacher
        return net.embed
    if target == "input":
        return lambda x: x.flatten(1)
    raise KeyError(target)


def features(run: "Run", target: str) -> Features:
    """Embeddings of the train and test split for ``target``, with the networks in eval mode."""
    modes = [(m, m.training) for m in (run.student, run.teacher)]
    for m, _ in modes:
        m.eval()
    try:
        embed = target_embedder(run, target)
        train = extract(embed, run.data.train.images, run)
        test = extract(embed, run.data.test.images, run)
    finally:
        for m, mode in modes:
            m.train(mode)
    return Features(target, train, run.data.train.labels, test, run.data.test.labels, run.data.num_classes,
                    run.cfg.eval.seed)
