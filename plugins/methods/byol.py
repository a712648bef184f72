"""Method ``byol`` — Bootstrap Your Own Latent (Grill et al., "Bootstrap your own latent: A new approach to
self-supervised learning", NeurIPS 2020).

* online network = the student: encoder + projector (``head=byol``: linear 4096, BN, ReLU, linear 256) + the
  predictor of objective ``byol`` (the same MLP shape: ``predictor_hidden_dims=[4096]``, output = the projection
  width);
* target network = the teacher: an exponential moving average of the online encoder and projector, τ from 0.996
  to 1 on BYOL's cosine schedule (``updater=ema``), BatchNorm with batch statistics (``bn_mode=from_data``); both
  start from one random init (``student=copy``);
* loss: the normalised MSE ‖p̄ − z̄‖² = 2 − 2·cos(p, z) between the online prediction of one view and the target
  projection of the other, symmetrised: L + L̃ (for more than two views, the mean over ordered view pairs, times
  two);
* views: BYOL's asymmetric augmentation (``augment=byol``): random resized crops (scale 0.08–1), flip, colour
  jitter (p 0.8; 0.4, 0.4, 0.2, 0.1), grayscale (p 0.2), Gaussian blur (p 1.0 / 0.1), solarisation (p 0 / 0.2).

The optimiser is the experiment's (BYOL: LARS, lr 0.2 · batch/256, weight decay 1.5e-6, 4096 batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from framework.api import hookimpl
from plugins.data.augmentations import MultiCrop, TwoViewOptions
from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.prediction import PredictionObjective, PredictionOptions


@dataclass
class ByolProjectorOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [4096])
    out_dim: int = 256


@dataclass
class ByolAugmentOptions(TwoViewOptions):
    blur: List[float] = field(default_factory=lambda: [1.0, 0.1, 0.0])
    solarize: List[float] = field(default_factory=lambda: [0.0, 0.2, 0.0])


@dataclass
class ByolOptions(PredictionOptions):
    pass


class BYOL(PredictionObjective):
    """The online prediction of one view regresses the EMA target's projection of the other (2 − 2·cos)."""

    name = "byol"

    def targets(self, run, views, projections):
        with torch.no_grad():
            return [run.teacher(v) for v in views]

    def distance(self, prediction, target):
        p, z = F.normalize(wide(prediction), dim=-1), F.normalize(wide(target), dim=-1)
        return 2.0 * (2.0 - 2.0 * (p * z).sum(-1)).mean()  # times 2: BYOL sums the two directions


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "byol", BYOL, ByolOptions)
    registry.add("head", "byol", mlp_head, ByolProjectorOptions, doc="BYOL's projector: linear 4096, BN, ReLU, "
                 "linear 256")
    registry.add("augment", "byol", MultiCrop, ByolAugmentOptions,
                 doc="BYOL's two asymmetric views: crops, flip, colour jitter, grayscale, blur 1.0/0.1, solarise 0/0.2")
    add_method(registry, "byol",
               {"teacher": "random", "student": "copy", "updater": "ema", "objective": "byol", "head": "byol",
                "augment": "byol"},
               {"updater": {"momentum": 0.996, "final_momentum": 1.0, "bn_mode": "from_data"}},
               doc="online predictor regresses an EMA target (Grill et al., NeurIPS 2020)")
