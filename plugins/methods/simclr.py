"""Method ``simclr`` — a Simple framework for Contrastive Learning of visual Representations (Chen, Kornblith,
Norouzi, Hinton, ICML 2020).

* network: the student, encoder + projector (``head=simclr``: linear 2048, BN, ReLU, linear 128; the official code
  has BN in the projection head);
* loss: NT-Xent (normalised temperature-scaled cross-entropy) with in-batch negatives: for 2N embeddings of N
  images, each one's positive is the other view of its image and its negatives are the other 2(N − 1)
  embeddings; cosine similarities divided by ``temperature`` (0.5, the paper's CIFAR-10 setting; ImageNet: 0.1),
  averaged over all 2N anchors. Both views go through the network as one batch (shared BatchNorm statistics, as
  in the paper's code). Made global under data parallelism: every process gathers all processes' embeddings
  (:func:`framework.api.distributed.gather_with_grad`, gradients flow back to their process) and scores its own anchors
  against every other embedding of the global batch, so the negatives are the global batch's 2(N − 1);
* views: random resized crops (scale 0.08–1), flip, colour distortion of strength 1 (jitter p 0.8; 0.8, 0.8,
  0.8, 0.2), grayscale (p 0.2), Gaussian blur (p 0.5) (``augment=simclr``).

The teacher is never used: it stays the random init the student started from. The optimiser is the experiment's
(SimCLR: LARS, lr 0.3 · batch/256, weight decay 1e-6, batch 4096).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from framework.api import distributed, hookimpl, RtlabError
from plugins.data.augmentations import MultiCrop, TwoViewOptions
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.joint_embedding import JointEmbedding


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of two views' embeddings (row i of ``a`` and of ``b`` are one image) and the fraction of anchors
    whose positive is their most similar embedding. Under data parallelism ``a`` and ``b`` are this process's rows:
    its anchors are scored against the embeddings of every process (the global batch's negatives), and the loss is
    the mean over its anchors (the loop weights it by the process's share of the batch)."""
    n = len(a)
    za, zb = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    anchors = torch.cat([za, zb])
    if distributed.active():
        pairs, start = distributed.gather_with_grad(torch.cat([za, zb], 1))  # (N, 2·dim): [a | b] of every image
        total, everyone = len(pairs), torch.cat(pairs.chunk(2, 1))
    else:
        start, total, everyone = 0, n, anchors
    logits = anchors @ everyone.T / temperature  # (2n, 2N)
    rows = torch.arange(n, device=a.device)
    own = torch.cat([start + rows, total + start + rows])  # each anchor's own column: not its own negative
    logits[torch.arange(2 * n, device=a.device), own] = float("-inf")
    positives = torch.cat([total + start + rows, start + rows])  # i ↔ i + N
    loss = F.cross_entropy(logits, positives)
    with torch.no_grad():
        hits = (logits.argmax(1) == positives).float().mean()
    return loss, hits


@dataclass
class SimCLROptions:
    temperature: float = 0.5  # τ of the cosine similarities (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet)


class SimCLR(JointEmbedding):
    """NT-Xent between the projections of two views, the batch's other images as negatives."""

    name = "simclr"
    together = True

    def __init__(self, opts: SimCLROptions) -> None:
        if opts.temperature <= 0:
            raise RtlabError(f"objective.temperature must be positive, got {opts.temperature}")
        self.opts = opts

    def pair_loss(self, a, b):
        loss, hits = nt_xent(a, b, self.opts.temperature)
        return loss, {"positive_top1": hits}


@dataclass
class SimCLRProjectorOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [2048])
    out_dim: int = 128


@dataclass
class SimCLRAugmentOptions(TwoViewOptions):
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    blur: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.0])


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "simclr", SimCLR, SimCLROptions)
    registry.add("head", "simclr", mlp_head, SimCLRProjectorOptions,
                 doc="SimCLR's projector: linear 2048, BN, ReLU, linear 128")
    registry.add("augment", "simclr", MultiCrop, SimCLRAugmentOptions,
                 doc="SimCLR's two views: crops, flip, colour distortion of strength 1, grayscale, blur p 0.5")
    add_method(registry, "simclr",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "simclr",
                "head": "simclr", "augment": "simclr"},
               doc="contrastive NT-Xent with in-batch negatives (Chen et al., ICML 2020)")
