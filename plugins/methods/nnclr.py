"""Method ``nnclr`` — Nearest-Neighbour Contrastive Learning of visual Representations (Dwibedi, Aytar, Tompson,
Sermanet, Zisserman, "With a Little Help from My Friends", ICCV 2021).

* network: the student, encoder + projector (``head=nnclr``: linear 2048, BN, ReLU, linear 2048, BN, ReLU, linear
  256, BN) + the predictor of objective ``nnclr`` (linear 4096, BN, ReLU, linear 256);
* support set Q: the L2-normalised projections z of the last 98,304 images (view 1), first in first out;
* loss (the paper's Eq. 2 with its predictor, symmetrised): for each image i, its projection's nearest neighbour
  NN(zᵢ) = argmax_{q∈Q} z̄ᵢ·q in the support set is the anchor, the prediction of the other view p̄ᵢ⁺ the positive
  and the other images' predictions p̄ₖ⁺ the negatives: −log exp(NN(zᵢ)·p̄ᵢ⁺/τ) / Σₖ exp(NN(zᵢ)·p̄ₖ⁺/τ), τ = 0.1,
  averaged over images and over the two directions. The neighbour carries no gradient;
* views: BYOL's asymmetric augmentation (``augment=byol``), as in the paper.

The support set (``objective.support_size`` rows) starts as random unit vectors from the ``queue`` stream of
``train.seed`` (as in lightly's and solo-learn's code), is a buffer of the objective (saved and resumed exactly)
and, under data parallelism, receives every process's projections, so every process looks up neighbours in the
global support set; the negatives are the global batch's predictions. The teacher is never used: it stays the
random init the student started from. The optimiser is the experiment's (NNCLR: LARS, lr 0.3 · batch/256, weight
decay 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from framework.api import RtlabError, hookimpl, stream_seed
from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.memory import FeatureQueue, nce
from plugins.methods.prediction import PredictionObjective, PredictionOptions, needs_two_views, output_dim


@dataclass
class NNCLROptions(PredictionOptions):
    temperature: float = 0.1  # τ
    support_size: int = 98304  # rows of the support set


@dataclass
class NNCLRHeadOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [2048, 2048])
    out_dim: int = 256
    output_batchnorm: bool = True


@torch.no_grad()
def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The row of ``support`` (L2-normalised) with the largest cosine similarity to each row of ``z``."""
    return support[torch.argmax(F.normalize(z, dim=1) @ support.T, dim=1)]


class NNCLR(PredictionObjective):
    """A support-set neighbour of one view's projection is contrasted with the other view's predictions."""

    name = "nnclr"

    def __init__(self, opts: NNCLROptions) -> None:
        if opts.temperature <= 0 or opts.support_size <= 0:
            raise RtlabError(f"objective.temperature and objective.support_size must be positive, got "
                             f"{opts.temperature} and {opts.support_size}")
        super().__init__(opts)
        self.support: FeatureQueue | None = None

    def setup(self, run):
        params = super().setup(run)
        dim = output_dim(run.student.head, run.student.embed_dim)
        self.support = FeatureQueue(self.opts.support_size, dim, stream_seed(run.cfg.train.seed, "queue"),
                                    run.device, run.dtype)
        return params

    def loss(self, run, views, index):
        needs_two_views(self.name, len(views))
        projections = [wide(run.student(v)) for v in views]
        predictions = [F.normalize(wide(self.predictor(z)), dim=1) for z in projections]
        support = self.support.rows.to(projections[0].dtype)
        anchors = [nearest_neighbours(z, support) for z in projections]
        pairs = [(i, j) for i in range(len(views)) for j in range(len(views)) if i != j]
        total = sum(nce(anchors[i], predictions[j], self.opts.temperature) for i, j in pairs) / len(pairs)
        with torch.no_grad():
            agree = (anchors[0] * F.normalize(projections[0], dim=1)).sum(-1).mean()
        self.support.push(F.normalize(projections[0].detach(), dim=1))
        return total, {"neighbour_cosine": agree}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "nnclr", NNCLR, NNCLROptions)
    registry.add("head", "nnclr", mlp_head, NNCLRHeadOptions,
                 doc="NNCLR's projector: 2 linear layers of 2048 with BN and ReLU, linear 256, BN")
    add_method(registry, "nnclr",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "nnclr", "head": "nnclr",
                "augment": "byol"},
               doc="support-set nearest neighbours as positives (Dwibedi et al., ICCV 2021)")
