"""Predicting one view's embedding from another's (BYOL, SimSiam): the predictor and the objective they share.

The online network is the student (encoder + projection head); a predictor MLP, owned by the objective and trained
with the student, maps its projection of view i to a prediction of the target's projection of view j ≠ i. The
target is given by the subclass: the teacher network (BYOL's EMA target) or the student's own output with the
gradient stopped (SimSiam). Every ordered pair of different views counts (two views: the symmetrised loss). Each
view goes through the networks on its own, so BatchNorm normalises every view with its own batch statistics (as
in both papers' code).

The predictor is initialised from the ``predictor`` random stream of ``train.seed`` and saved with the training
state (the objective is an ``nn.Module``, so rtlab saves and restores it with the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from framework.api import RtlabError
from plugins.distill.losses import wide
from plugins.networks.heads import MLP, MLPHeadOptions


@dataclass
class PredictionOptions:
    predictor_hidden_dims: List[int] = field(default_factory=lambda: [4096])  # hidden widths of the predictor
    predictor_batchnorm: bool = True  # BatchNorm1d after the predictor's hidden layers


def output_dim(head: nn.Module, in_dim: int) -> int:
    """Output width of a projection head (its ``out_dim``, else measured with a dry forward pass)."""
    width = getattr(head, "out_dim", None)
    if width is not None:
        return int(width)
    was = head.training
    head.eval()
    with torch.no_grad():
        width = head(torch.zeros(2, in_dim, device=next(head.parameters()).device)).shape[-1]
    head.train(was)
    return int(width)


def needs_two_views(name: str, views: int) -> None:
    if views < 2:
        raise RtlabError(f"objective={name} compares two views of every image, but the augmentation gives {views}; "
                         f"use the method's augmentation (method={name}) or one with views >= 2 (augment=byol)")


class PredictionObjective(nn.Module):
    """Student projection of view i → predictor → compared with the target of view j, over all pairs i ≠ j."""

    name = "prediction"

    def __init__(self, opts: PredictionOptions) -> None:
        super().__init__()
        self.opts = opts
        self.predictor: nn.Module | None = None

    def setup(self, run):
        from framework.api import stream_seed

        width = output_dim(run.student.head, run.student.embed_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(run.cfg.train.seed, "predictor"))
            predictor = MLP(width, MLPHeadOptions(hidden_dims=list(self.opts.predictor_hidden_dims), out_dim=width,
                                                  batchnorm=self.opts.predictor_batchnorm))
        self.predictor = run.place(predictor).train()
        return list(self.predictor.parameters())

    def targets(self, run, views: list[torch.Tensor], projections: list[torch.Tensor]) -> list[torch.Tensor]:
        """The regression target of every view (no gradient flows into them)."""
        raise NotImplementedError

    def distance(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one pair, averaged over the batch."""
        raise NotImplementedError

    def loss(self, run, views, index):
        needs_two_views(self.name, len(views))
        projections = [run.student(v) for v in views]
        predictions = [self.predictor(z) for z in projections]
        targets = self.targets(run, views, projections)
        pairs = [(i, j) for i in range(len(views)) for j in range(len(views)) if i != j]
        total = sum(self.distance(predictions[i], targets[j]) for i, j in pairs) / len(pairs)
        with torch.no_grad():
            cos = sum(nn.functional.cosine_similarity(wide(predictions[i]), wide(targets[j]), dim=-1).mean()
                      for i, j in pairs) / len(pairs)
        return total, {"cosine": cos}
