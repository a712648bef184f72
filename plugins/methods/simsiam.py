"""Method ``simsiam`` — Simple Siamese representation learning (Chen & He, "Exploring Simple Siamese Representation
Learning", CVPR 2021).

* one network, the student: encoder + projector (``head=simsiam``: 3 layers of 2048 with BN and ReLU, BN on the
  output) + the predictor of objective ``simsiam`` (bottleneck MLP 2048 → 512 → 2048 with BN and ReLU after the
  hidden layer);
* loss: negative cosine similarity between the prediction of one view and the projection of the other with the
  gradient stopped, symmetrised: ½·D(p₁, sg(z₂)) + ½·D(p₂, sg(z₁)); no target network, no negatives, no momentum;
* views: random resized crops (scale 0.2–1), flip, colour jitter (p 0.8; 0.4, 0.4, 0.4, 0.1), grayscale (p 0.2),
  Gaussian blur (p 0.5) (``augment=simsiam``).

The teacher is never used for training: it stays the random init the student started from (``student=copy``,
``updater=frozen``), so the probes' ``teacher`` targets measure the same architecture untrained. The optimiser is
the experiment's (SimSiam: SGD, lr 0.05 · batch/256, weight decay 1e-4, cosine; fixed lr for the predictor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch.nn.functional as F

from framework.api import hookimpl
from plugins.data.augmentations import MultiCrop, TwoViewOptions
from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.prediction import PredictionObjective, PredictionOptions


@dataclass
class SimSiamProjectorOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [2048, 2048])
    out_dim: int = 2048
    output_batchnorm: bool = True
    output_affine: bool = False


@dataclass
class SimSiamAugmentOptions(TwoViewOptions):
    global_scale: Tuple[float, float] = (0.2, 1.0)
    saturation: float = 0.4
    blur: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.0])


@dataclass
class SimSiamOptions(PredictionOptions):
    predictor_hidden_dims: List[int] = field(default_factory=lambda: [512])


class SimSiam(PredictionObjective):
    """The prediction of one view matches the other view's own projection, whose gradient is stopped."""

    name = "simsiam"

    def targets(self, run, views, projections):
        return [z.detach() for z in projections]

    def distance(self, prediction, target):
        return -F.cosine_similarity(wide(prediction), wide(target), dim=-1).mean()


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "simsiam", SimSiam, SimSiamOptions)
    registry.add("head", "simsiam", mlp_head, SimSiamProjectorOptions,
                 doc="SimSiam's projector: 3 linear layers of 2048 with BN, ReLU between them")
    registry.add("augment", "simsiam", MultiCrop, SimSiamAugmentOptions,
                 doc="SimSiam's two views: crops (scale 0.2-1), flip, colour jitter, grayscale, blur p 0.5")
    add_method(registry, "simsiam",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "simsiam",
                "head": "simsiam", "augment": "simsiam"},
               doc="predictor + stop-gradient, no target network (Chen & He, CVPR 2021)")
