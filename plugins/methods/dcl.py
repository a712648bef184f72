"""Methods ``dcl`` and ``dclw`` — Decoupled Contrastive Learning (Yeh, Hong, Hsu, Liu, Chen, LeCun, ECCV 2022).

SimCLR with the positive pair removed from the denominator of InfoNCE (the "negative-positive coupling"), which
makes the loss less dependent on large batches:

* network and views: SimCLR's (``head=simclr``: linear 2048, BN, ReLU, linear 128; ``augment=simclr``); both views
  go through the student as one batch;
* loss ``dcl``: for each anchor z̄ᵢ⁽¹⁾ (L2-normalised), −⟨z̄ᵢ⁽¹⁾, z̄ᵢ⁽²⁾⟩/τ + log Σ_{k≠i, l∈{1,2}}
  exp(⟨z̄ᵢ⁽¹⁾, z̄ₖ⁽ˡ⁾⟩/τ), τ = 0.1, averaged over the anchors of both views (Eq. 6 of the paper);
* loss ``dclw`` (Eq. 7): the positive term weighted by w = 2 − exp(⟨z̄ᵢ⁽¹⁾, z̄ᵢ⁽²⁾⟩/σ) / mean_k exp(⟨z̄ₖ⁽¹⁾,
  z̄ₖ⁽²⁾⟩/σ), σ = 0.5 (a von Mises-Fisher weighting, no gradient through the weights).

Made global under data parallelism as SimCLR: every process gathers all embeddings (gradients flow back), so the
negatives and the weights' normalisation are those of the global batch. The teacher is never used. The optimiser is
the experiment's (DCL: SimCLR's LARS recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from framework.api import RtlabError, distributed, hookimpl
from plugins.distill.losses import wide
from plugins.methods import add_method
from plugins.methods.joint_embedding import JointEmbedding


@dataclass
class DCLOptions:
    temperature: float = 0.1  # τ
    sigma: Optional[float] = None  # σ of DCLW's positive weights; None: DCL (no weights)


@dataclass
class DCLWOptions(DCLOptions):
    sigma: Optional[float] = 0.5


def _one_side(x: torch.Tensor, y: torch.Tensor, all_x: torch.Tensor, all_y: torch.Tensor, start: int,
              temperature: float, sigma: float | None) -> torch.Tensor:
    n = len(x)
    rows = torch.arange(n, device=x.device)
    own = start + rows
    sim_xx = x @ all_x.T / temperature
    sim_xy = x @ all_y.T / temperature
    positive = -sim_xy[rows, own]
    if sigma is not None:
        with torch.no_grad():  # 2 − N · softmax over the global batch of ⟨x, y⟩/σ
            weights = 2 - len(all_x) * torch.softmax((all_x * all_y).sum(1) / sigma, dim=0)[own]
        positive = positive * weights
    mask = torch.zeros_like(sim_xx, dtype=torch.bool)
    mask[rows, own] = True
    negatives = torch.logsumexp(torch.cat([sim_xx.masked_fill(mask, float("-inf")),
                                           sim_xy.masked_fill(mask, float("-inf"))], 1), dim=1)
    return (positive + negatives).mean()


def dcl_loss(a: torch.Tensor, b: torch.Tensor, temperature: float, sigma: float | None = None) -> torch.Tensor:
    """The decoupled contrastive loss of two views' embeddings (rows are the same images), symmetrised; with
    ``sigma``, DCLW's weighted positives. Under data parallelism the anchors are this process's rows."""
    za, zb = F.normalize(wide(a), dim=1), F.normalize(wide(b), dim=1)
    pairs, start = distributed.gather_with_grad(torch.cat([za, zb], 1))
    all_a, all_b = pairs.chunk(2, 1)
    return 0.5 * (_one_side(za, zb, all_a, all_b, start, temperature, sigma)
                  + _one_side(zb, za, all_b, all_a, start, temperature, sigma))


class DCL(JointEmbedding):
    """InfoNCE without the positive in the denominator (and, as DCLW, with weighted positives)."""

    name = "dcl"
    together = True

    def __init__(self, opts: DCLOptions) -> None:
        if opts.temperature <= 0 or (opts.sigma is not None and opts.sigma <= 0):
            raise RtlabError(f"objective.temperature and objective.sigma must be positive, got {opts.temperature} "
                             f"and {opts.sigma}")
        self.opts = opts

    def pair_loss(self, a, b):
        return dcl_loss(a, b, self.opts.temperature, self.opts.sigma), {}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "dcl", DCL, DCLOptions)
    registry.add("objective", "dclw", DCL, DCLWOptions)
    methods = {"dcl": "decoupled contrastive loss: no positive in the denominator (Yeh et al., ECCV 2022)",
               "dclw": "DCL with von Mises-Fisher weighted positives (Yeh et al., ECCV 2022)"}
    for name, doc in methods.items():
        add_method(registry, name,
                   {"teacher": "random", "student": "copy", "updater": "frozen", "objective": name, "head": "simclr",
                    "augment": "simclr"}, doc=doc)
