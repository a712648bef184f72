"""Method ``wmse`` — Whitening MSE (Ermolov, Siarohin, Sangineto, Sebe, "Whitening for Self-Supervised Representation
Learning", ICML 2021).

* network: the student, encoder + projector (``head=wmse``: linear 1024, BN, ReLU, linear 64); all views go
  through it as one batch;
* loss: the batch is split at random into sub-batches of ``w_size`` = 128 images; within each sub-batch, each
  view's embeddings are whitened — centred, then multiplied by the inverse of the Cholesky factor of their
  covariance, so that they have identity covariance — and the loss is the normalised MSE 2 − 2·cos between the
  whitened embeddings of two views of one image, averaged over images and view pairs (``w_iter`` = 1 random
  split per step). Whitening replaces negatives: it scatters the embeddings over the unit sphere;
* views: W-MSE's CIFAR augmentation (``augment=wmse``: crops of scale 0.2–1, flip, colour jitter p 0.8 (0.4, 0.4,
  0.4, 0.1), grayscale p 0.1, no blur).

The random split comes from the ``whitening`` stream of ``train.seed`` (a generator saved with the training state).
A batch that is not a multiple of ``w_size`` is split into ⌊N / w_size⌋ nearly equal sub-batches (the paper drops
the last incomplete batch). Under data parallelism every process gathers all processes' embeddings (gradients flow
back) and whitens the global batch, as one process would. The teacher is never used. The optimiser is the
experiment's (W-MSE CIFAR-10: Adam, lr 3e-3, weight decay 1e-6, batch 256 (W-MSE 2)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.nn.functional as F

from framework.api import RtlabError, distributed, hookimpl, stream_seed
from plugins.data.augmentations import MultiCrop, TwoViewOptions
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.joint_embedding import JointEmbedding


@dataclass
class WMSEOptions:
    w_size: int = 128  # images per whitened sub-batch
    w_iter: int = 1  # random splits per step
    eps: float = 0.0  # shrinkage of the covariance towards the identity before the Cholesky factorisation


@dataclass
class WMSEHeadOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [1024])
    out_dim: int = 64


@dataclass
class WMSEAugmentOptions(TwoViewOptions):
    global_scale: Tuple[float, float] = (0.2, 1.0)
    saturation: float = 0.4
    grayscale: float = 0.1


def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``x`` (rows: samples) centred and whitened with the inverse Cholesky factor of its (unbiased, shrunk by
    ``eps``) covariance: W-MSE's ``Whitening2d`` in training mode."""
    xc = x - x.mean(0)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    cov = (1 - eps) * (xc.T @ xc) / (len(x) - 1) + eps * eye
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info):
        raise RtlabError(f"W-MSE: the covariance of a sub-batch of {len(x)} embeddings of width {x.shape[1]} is "
                         "singular; use a larger objective.w_size (at least twice head.out_dim), a positive "
                         "objective.eps or train.drop_last=true")
    return xc @ torch.linalg.solve_triangular(factor, eye, upper=False).T


def wmse_loss(embeddings: list[torch.Tensor], order: torch.Tensor, w_size: int, eps: float = 0.0) -> torch.Tensor:
    """W-MSE of the views' ``embeddings`` (rows are the same images) for one random ``order`` of the rows: each
    view whitened per sub-batch of ``order``, then 2 − 2·cos between every pair of views, averaged."""
    n = len(embeddings[0])
    whitened = [torch.empty_like(e) for e in embeddings]
    for part in order.to(embeddings[0].device).tensor_split(max(1, n // w_size)):
        for e, w in zip(embeddings, whitened):
            w[part] = whiten(e[part], eps)
    pairs = [(i, j) for i in range(len(embeddings)) for j in range(i + 1, len(embeddings))]
    return sum(2 - 2 * F.cosine_similarity(whitened[i], whitened[j], dim=1).mean() for i, j in pairs) / len(pairs)


class WMSE(JointEmbedding):
    """The normalised MSE between views after whitening each view's embeddings per sub-batch."""

    name = "wmse"
    together = True

    def __init__(self, opts: WMSEOptions) -> None:
        if opts.w_size < 2 or opts.w_iter < 1 or not 0 <= opts.eps < 1:
            raise RtlabError(f"objective.w_size must be >= 2, objective.w_iter >= 1 and objective.eps in [0, 1), got "
                             f"{opts.w_size}, {opts.w_iter} and {opts.eps}")
        self.opts = opts
        self.generator: torch.Generator | None = None

    def setup(self, run):
        self.generator = torch.Generator().manual_seed(stream_seed(run.cfg.train.seed, "whitening"))
        return []

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def loss(self, run, views, index):
        embeddings = self.embeddings(run, views)
        if distributed.active():  # the global batch
            embeddings = list(distributed.gather_with_grad(torch.cat(embeddings, 1))[0].chunk(len(views), 1))
        n = len(embeddings[0])
        loss = sum(wmse_loss(embeddings, torch.randperm(n, generator=self.generator), self.opts.w_size,
                             self.opts.eps) for _ in range(self.opts.w_iter)) / self.opts.w_iter
        return loss, {}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "wmse", WMSE, WMSEOptions)
    registry.add("head", "wmse", mlp_head, WMSEHeadOptions, doc="W-MSE's projector: linear 1024, BN, ReLU, linear 64")
    registry.add("augment", "wmse", MultiCrop, WMSEAugmentOptions,
                 doc="W-MSE's two views: crops (scale 0.2-1), flip, colour jitter p 0.8, grayscale p 0.1")
    add_method(registry, "wmse",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "wmse", "head": "wmse",
                "augment": "wmse"},
               doc="normalised MSE between whitened views (Ermolov et al., ICML 2021)")
