"""Method ``moco_v3`` — Momentum Contrast v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021), its ResNet setting.

* online network = the student: encoder + projector (``head=moco_v3``: linear 4096, BN, ReLU, linear 256, BN
  without affine parameters) + the predictor of objective ``moco_v3`` (linear 4096, BN, ReLU, linear 256);
* momentum network = the teacher: an exponential moving average of the online encoder and projector, momentum
  0.99 → 1 on a cosine schedule (``updater=ema``, BN with batch statistics);
* loss: ctr(q₁, k₂) + ctr(q₂, k₁), where ctr(q, k) = 2τ · CE(q·kᵀ/τ, diagonal) over the L2-normalised predictions
  q of one view and momentum projections k of the other: every other image's key in the batch is a negative, no
  queue. τ = 1 (the paper's ResNet setting; ViTs: 0.2). Under data parallelism the keys of every process are
  gathered, so the negatives are those of the global batch (as the official code's ``concat_all_gather``);
* views: BYOL's asymmetric augmentation (``augment=byol``), as in the paper.

The predictor is initialised from the ``predictor`` stream of ``train.seed`` and saved with the training state.
The optimiser is the experiment's (MoCo v3 ResNet-50: LARS, lr 0.6 · batch/256 (100 epochs), weight decay 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from framework.api import RtlabError, hookimpl
from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.memory import nce
from plugins.methods.prediction import PredictionObjective, PredictionOptions


@dataclass
class MoCoV3Options(PredictionOptions):
    temperature: float = 1.0  # τ (ResNet: 1.0; ViT: 0.2)


@dataclass
class MoCoV3HeadOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [4096])
    out_dim: int = 256
    output_batchnorm: bool = True
    output_affine: bool = False


def moco_v3_ctr(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ctr(q, k) = 2τ · CE(q̄·k̄ᵀ/τ, diagonal) (Algorithm 1 of the paper), negatives from every process."""
    return 2 * temperature * nce(F.normalize(wide(q), dim=1), F.normalize(wide(k), dim=1), temperature)


class MoCoV3(PredictionObjective):
    """The prediction of one view is contrasted with the momentum encoder's keys of the other view."""

    name = "moco_v3"

    def __init__(self, opts: MoCoV3Options) -> None:
        if opts.temperature <= 0:
            raise RtlabError(f"objective.temperature must be positive, got {opts.temperature}")
        super().__init__(opts)

    def targets(self, run, views, projections):
        with torch.no_grad():
            return [run.teacher(v) for v in views]

    def distance(self, prediction, target):
        # times 2: MoCo v3 sums the two directions, the base class averages over ordered view pairs
        return 2 * moco_v3_ctr(prediction, target, self.opts.temperature)


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "moco_v3", MoCoV3, MoCoV3Options)
    registry.add("head", "moco_v3", mlp_head, MoCoV3HeadOptions,
                 doc="MoCo v3's projector: linear 4096, BN, ReLU, linear 256, BN without affine parameters")
    add_method(registry, "moco_v3",
               {"teacher": "random", "student": "copy", "updater": "ema", "objective": "moco_v3", "head": "moco_v3",
                "augment": "byol"},
               {"updater": {"momentum": 0.99, "final_momentum": 1.0, "bn_mode": "from_data"}},
               doc="momentum encoder, predictor, in-batch keys as negatives (Chen, Xie, He, ICCV 2021)")
