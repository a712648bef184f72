"""Method ``mmcr`` — Maximum Manifold Capacity Representations (Yerxa, Kuang, Simoncelli, Chung, "Learning Efficient
Coding of Natural Images with Maximum Manifold Capacity Representations", NeurIPS 2023), with a momentum encoder as
in lightly's implementation.

* online network = the student: encoder + projector (``head=mmcr``: linear 8192, BN, ReLU, linear 512); momentum
  network = the teacher: an EMA of the student, momentum 0.99 → 1 on a cosine schedule (``updater=ema``, BN with
  batch statistics);
* views: k = 8 augmentations of every image (``augment=mmcr``: SimCLR-style crops of scale 0.08–1, flip, colour
  jitter p 0.8 (0.4, 0.4, 0.2, 0.1), grayscale p 0.2, blur); the online network embeds all k (one batch), the
  momentum network too;
* loss: with zᵢ⁽ʲ⁾ the L2-normalised embeddings of image i's views (online and momentum: 2k per image) and cᵢ their
  mean (the centroid of image i's manifold), L = −‖C‖_* + λ · meanᵢ ‖Zᵢ‖_*, where C is the batch's matrix of
  centroids, Zᵢ image i's matrix of view embeddings and ‖·‖_* the nuclear norm (the sum of singular values):
  spread the centroids over many dimensions while (λ > 0) compressing each image's manifold. λ = 0.005
  (``objective.lmbda``, lightly's default).

Made global under data parallelism: every process gathers all processes' embeddings (gradients flow back) and
takes the nuclear norm of the global batch's centroids, as one process would. The optimiser is the experiment's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from framework.api import RtlabError, distributed, forward_views, hookimpl
from plugins.distill.losses import wide
from plugins.data.augmentations import MultiCrop, TwoViewOptions
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.prediction import needs_two_views


@dataclass
class MMCROptions:
    lmbda: float = 0.005  # λ, weight of the local (per-image) nuclear norms
    momentum_views: bool = True  # the momentum network's embeddings join the online ones (lightly's MMCR)


@dataclass
class MMCRHeadOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [8192])
    out_dim: int = 512


@dataclass
class MMCRAugmentOptions(TwoViewOptions):
    global_views: int = 8
    blur: List[float] = field(default_factory=lambda: [1.0, 1.0, 0.0])


def mmcr_loss(views: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, −global nuclear norm, mean local nuclear norm) for ``views`` of shape (images, views, dim), already
    L2-normalised."""
    centroid_norm = torch.linalg.svdvals(views.mean(1)).sum()
    local_norm = torch.linalg.svdvals(views).sum() / len(views)
    return -centroid_norm + lmbda * local_norm, centroid_norm.detach(), local_norm.detach()


class MMCR:
    """The nuclear norm of the batch's view centroids is maximised (and each image's views compressed)."""

    name = "mmcr"

    def __init__(self, opts: MMCROptions) -> None:
        if opts.lmbda < 0:
            raise RtlabError(f"objective.lmbda must be >= 0, got {opts.lmbda}")
        self.opts = opts

    def setup(self, run):
        return []

    def loss(self, run, views, index):
        needs_two_views(self.name, len(views))
        embeddings = [F.normalize(wide(z), dim=-1) for z in forward_views(run.student, views)]
        if self.opts.momentum_views:
            with torch.no_grad():
                embeddings += [F.normalize(wide(z), dim=-1) for z in forward_views(run.teacher, views)]
        stacked = torch.stack(embeddings, 1)  # (images, views, dim)
        if distributed.active():  # the global batch's centroids
            n, v, d = stacked.shape
            stacked = distributed.gather_with_grad(stacked.reshape(n, v * d))[0].reshape(-1, v, d)
        loss, centroid_norm, local_norm = mmcr_loss(stacked, self.opts.lmbda)
        return loss, {"centroid_nuclear_norm": centroid_norm, "local_nuclear_norm": local_norm}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "mmcr", MMCR, MMCROptions)
    registry.add("head", "mmcr", mlp_head, MMCRHeadOptions, doc="MMCR's projector: linear 8192, BN, ReLU, linear 512")
    registry.add("augment", "mmcr", MultiCrop, MMCRAugmentOptions,
                 doc="MMCR's 8 views: crops, flip, colour jitter, grayscale, blur")
    add_method(registry, "mmcr",
               {"teacher": "random", "student": "copy", "updater": "ema", "objective": "mmcr", "head": "mmcr",
                "augment": "mmcr"},
               {"updater": {"momentum": 0.99, "final_momentum": 1.0, "bn_mode": "from_data"}},
               doc="maximum manifold capacity: nuclear norm of view centroids (Yerxa et al., NeurIPS 2023)")
