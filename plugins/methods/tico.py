"""Method ``tico`` — Transformation Invariance and Covariance Contrast (Zhu, Liu, Huang, "TiCo: Transformation
Invariance and Covariance Contrast for Self-Supervised Visual Representation Learning", arXiv 2206.10698, 2022).

* online network = the student: encoder + projector (``head=tico``: linear 4096, BN, ReLU, linear 256);
* momentum network = the teacher: an exponential moving average of the student, momentum 0.99 → 1 on a cosine
  schedule (``updater=ema``, BN with batch statistics);
* loss (the paper's Algorithm 1, as lightly's ``TiCoLoss``): with z̄ₐ the L2-normalised online projection of view
  1 and z̄_b the momentum projection of view 2, C ← β·C + (1 − β)·z̄ₐᵀz̄ₐ/N (a running covariance of the online
  embeddings, no gradient) and L = 1 − mean ⟨z̄ₐ, z̄_b⟩ + ρ·mean z̄ₐᵀ C z̄ₐ, β = 0.9, ρ = 8: invariance to the
  transformation plus a contrast against the directions the embeddings already cover;
* views: BYOL's asymmetric augmentation (``augment=byol``).

C (projection width squared) starts at zero and is a buffer of the objective: saved with the training state and
resumed exactly (lightly keeps it as a plain attribute, lost on restart). Under data parallelism every process
gathers all processes' embeddings (gradients flow back) and computes C and the loss of the global batch, as one
process would. The optimiser is the experiment's (TiCo: LARS, as BYOL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import RtlabError, distributed, hookimpl
from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.prediction import needs_two_views, output_dim


@dataclass
class TiCoOptions:
    beta: float = 0.9  # β, momentum of the running covariance C
    rho: float = 8.0  # ρ, weight of the covariance contrast


@dataclass
class TiCoHeadOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [4096])
    out_dim: int = 256


def tico_loss(za: torch.Tensor, zb: torch.Tensor, covariance: torch.Tensor, beta: float, rho: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, the updated running covariance, invariance term, contrast term) for the online embeddings ``za`` and
    the momentum embeddings ``zb`` of one batch (the global batch under data parallelism)."""
    za, zb = F.normalize(za, dim=1), F.normalize(zb, dim=1)
    c = beta * covariance + (1 - beta) * (za.T @ za).detach() / len(za)
    invariance = 1.0 - (za * zb).sum(1).mean()
    contrast = ((za @ c) * za).sum(1).mean()
    return invariance + rho * contrast, c.detach(), invariance.detach(), contrast.detach()


class TiCo(nn.Module):
    """Invariance to the other view's momentum embedding plus a contrast against the running covariance."""

    name = "tico"

    def __init__(self, opts: TiCoOptions) -> None:
        super().__init__()
        if not 0 <= opts.beta < 1 or opts.rho < 0:
            raise RtlabError(f"objective.beta must be in [0, 1) and objective.rho >= 0, got {opts.beta} and "
                             f"{opts.rho}")
        self.opts = opts

    def setup(self, run):
        dim = output_dim(run.student.head, run.student.embed_dim)
        self.register_buffer("covariance", torch.zeros(dim, dim, device=run.device, dtype=run.dtype))
        return []

    def loss(self, run, views, index):
        needs_two_views(self.name, len(views))
        za = wide(run.student(views[0]))
        with torch.no_grad():
            zb = wide(run.teacher(views[1]))
        if distributed.active():  # the global batch
            za, zb = distributed.gather_with_grad(torch.cat([za, zb], 1))[0].chunk(2, 1)
        loss, c, invariance, contrast = tico_loss(za, zb, self.covariance.to(za.dtype), self.opts.beta,
                                                  self.opts.rho)
        self.covariance.copy_(c)
        return loss, {"invariance": invariance, "contrast": contrast}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "tico", TiCo, TiCoOptions)
    registry.add("head", "tico", mlp_head, TiCoHeadOptions, doc="TiCo's projector: linear 4096, BN, ReLU, linear 256")
    add_method(registry, "tico",
               {"teacher": "random", "student": "copy", "updater": "ema", "objective": "tico", "head": "tico",
                "augment": "byol"},
               {"updater": {"momentum": 0.99, "final_momentum": 1.0, "bn_mode": "from_data"}},
               doc="transformation invariance + covariance contrast (Zhu, Liu, Huang, 2022)")
