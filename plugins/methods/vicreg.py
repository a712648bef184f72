"""Method ``vicreg`` — Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, "VICReg", ICLR 2022).

* network: the student, encoder + expander (``head=vicreg``: 3 linear layers of 8192, BN and ReLU after the first
  two, no bias on the last);
* loss: λ·invariance + μ·variance + ν·covariance with λ = μ = 25, ν = 1: the mean squared error between the two
  views' embeddings; a hinge keeping every dimension's standard deviation (√(var + 1e-4)) above γ = 1, averaged
  over dimensions, for each view; the sum of squared off-diagonal covariances divided by the dimension, for each
  view;
* views: BYOL's asymmetric augmentation (``augment=byol``), as in the paper.

Made global under data parallelism: every process gathers all processes' embeddings
(:func:`framework.api.distributed.gather_with_grad`, gradients flow back to their process) and computes the three terms
on the global batch (its variances and covariances) as one process would.

The teacher is never used: it stays the random init the student started from. The optimiser is the experiment's
(VICReg: LARS, base lr 0.2 · batch/256, weight decay 1e-6, batch 2048).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework.api import distributed, hookimpl
from plugins.networks.heads import mlp_head
from plugins.methods import add_method
from plugins.methods.joint_embedding import JointEmbedding, WideProjectorOptions


@dataclass
class VICRegOptions:
    invariance_weight: float = 25.0  # λ
    variance_weight: float = 25.0  # μ
    covariance_weight: float = 1.0  # ν
    std_target: float = 1.0  # γ, the standard deviation each dimension is kept above


def variance_term(z: torch.Tensor, target: float) -> torch.Tensor:
    std = torch.sqrt(z.var(0) + 1e-4)
    return F.relu(target - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    z = z - z.mean(0)
    cov = z.T @ z / (len(z) - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / z.shape[1]


class VICReg(JointEmbedding):
    """Invariance between two views' embeddings, with variance and covariance regularisation of each."""

    name = "vicreg"

    def __init__(self, opts: VICRegOptions) -> None:
        self.opts = opts

    def pair_loss(self, a, b):
        o = self.opts
        if distributed.active():  # the global batch
            a, b = distributed.gather_with_grad(torch.cat([a, b], 1))[0].chunk(2, 1)
        invariance = F.mse_loss(a, b)
        variance = (variance_term(a, o.std_target) + variance_term(b, o.std_target)) / 2
        covariance = covariance_term(a) + covariance_term(b)
        loss = o.invariance_weight * invariance + o.variance_weight * variance + o.covariance_weight * covariance
        return loss, {"invariance": invariance.detach(), "variance": variance.detach(),
                      "covariance": covariance.detach()}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "vicreg", VICReg, VICRegOptions)
    registry.add("head", "vicreg", mlp_head, WideProjectorOptions,
                 doc="VICReg's expander: 3 linear layers of 8192 with BN and ReLU between them")
    add_method(registry, "vicreg",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "vicreg",
                "head": "vicreg", "augment": "byol"},
               doc="invariance + variance + covariance regularisation (Bardes et al., ICLR 2022)")
