"""Method ``barlow_twins`` — redundancy reduction (Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised
Learning via Redundancy Reduction", ICML 2021).

* network: the student, encoder + projector (``head=barlow_twins``: 3 linear layers of 8192, BN and ReLU after the
  first two, no bias on the last);
* loss: the cross-correlation matrix C of the two views' embeddings, each standardised over the batch (BatchNorm
  without affine parameters), should be the identity: Σᵢ (1 − Cᵢᵢ)² + λ Σᵢ Σ_{j≠i} Cᵢⱼ², λ = ``lambd`` = 5e-3;
* views: BYOL's asymmetric augmentation (``augment=byol``), as in the paper.

Made global under data parallelism: every process gathers all processes' embeddings
(:func:`framework.api.distributed.gather_with_grad`, gradients flow back to their process) and computes the loss of the
global batch — its standardisation and cross-correlation — as one process would.

The teacher is never used: it stays the random init the student started from. The optimiser is the experiment's
(Barlow Twins: LARS, lr 0.2 for weights and 0.0048 for biases and BN, weight decay 1.5e-6, batch 2048).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framework.api import distributed, hookimpl
from plugins.networks.heads import mlp_head
from plugins.methods import add_method
from plugins.methods.joint_embedding import JointEmbedding, WideProjectorOptions


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean and unit (biased) variance per dimension over the batch, as BatchNorm1d(affine=False) in training."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


@dataclass
class BarlowTwinsOptions:
    lambd: float = 5e-3  # weight of the off-diagonal (redundancy) terms


class BarlowTwins(JointEmbedding):
    """The standardised cross-correlation of two views' embeddings is pushed to the identity matrix."""

    name = "barlow_twins"

    def __init__(self, opts: BarlowTwinsOptions) -> None:
        self.opts = opts

    def pair_loss(self, a, b):
        if distributed.active():  # the global batch
            a, b = distributed.gather_with_grad(torch.cat([a, b], 1))[0].chunk(2, 1)
        c = standardise(a).T @ standardise(b) / len(a)
        diagonal = torch.diagonal(c)
        on = (1.0 - diagonal).pow(2).sum()
        off = c.pow(2).sum() - diagonal.pow(2).sum()
        return on + self.opts.lambd * off, {"on_diagonal": on.detach(), "off_diagonal": off.detach()}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "barlow_twins", BarlowTwins, BarlowTwinsOptions)
    registry.add("head", "barlow_twins", mlp_head, WideProjectorOptions,
                 doc="Barlow Twins' projector: 3 linear layers of 8192 with BN and ReLU between them")
    add_method(registry, "barlow_twins",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "barlow_twins",
                "head": "barlow_twins", "augment": "byol"},
               doc="cross-correlation of two views pushed to the identity (Zbontar et al., ICML 2021)")
