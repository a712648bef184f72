"""Method ``swav`` — Swapping Assignments between multiple Views (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin,
"Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020).

* network: the student, encoder + head ``swav``: linear 2048, BN, ReLU, linear 128, L2 normalisation, then the
  prototypes C (a linear layer of 3,000 unit-norm rows without bias: the head's ``last`` layer). The prototypes are
  re-normalised to unit length before every step and frozen during the first epoch
  (``optimizer.freeze_last_layer_epochs=1``), as in the paper's code;
* codes: for each global crop, Q = Sinkhorn-Knopp(exp(z·C/ε)) with ε = 0.05 and 3 iterations — soft assignments of
  the batch to the prototypes under an equipartition constraint, no gradient;
* loss ("swapped prediction"): each global crop's codes are predicted from every *other* crop's scores,
  −Σ q·log softmax(z·C/τ) with τ = 0.1, averaged over the batch, over the other crops and over the global crops;
* views: multi-crop (``augment=swav``): 2 global crops (scale 0.14–1) and 6 local crops (scale 0.05–0.14, 3/7 of
  the global size as SwAV's 96/224), colour distortion of strength 1 (jitter p 0.8; 0.8, 0.8, 0.8, 0.2), grayscale
  p 0.2, blur p 0.5.

Sinkhorn runs over the global batch: under data parallelism every process gathers all processes' scores and
computes the codes one process would (and keeps its rows). For small batches the paper adds a queue of earlier
embeddings to the Sinkhorn input (``objective.queue_length``, e.g. 3,840 at batch 256, from epoch
``objective.queue_start_epoch``, used once full); the queue is a buffer of the objective (saved and resumed exactly).
The teacher is never used: it stays the random init the student started from. The optimiser is the experiment's
(SwAV: LARS, lr 4.8 at batch 4096, weight decay 1e-6, cosine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import RtlabError, distributed, forward_views, hookimpl
from plugins.distill.losses import wide
from plugins.data.augmentations import MultiCrop, TwoViewOptions
from plugins.distill.distillation import global_view_count
from plugins.networks.heads import DinoHeadOptions, dino_head
from plugins.methods import add_method
from plugins.methods.memory import FeatureQueue


@dataclass
class SwAVOptions:
    temperature: float = 0.1  # τ of the predicted assignments
    epsilon: float = 0.05  # ε of the Sinkhorn-Knopp codes
    sinkhorn_iterations: int = 3
    queue_length: int = 0  # earlier embeddings added to the Sinkhorn input per global crop (0: no queue)
    queue_start_epoch: int = 15  # the epoch (0-based) from which the queue is filled


@dataclass
class SwAVHeadOptions(DinoHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [2048])
    batchnorm: bool = True
    activation: str = "relu"
    bottleneck_dim: int = 128  # the embedding z
    out_dim: int = 3000  # prototypes
    last_bias: bool = False


@dataclass
class SwAVAugmentOptions(TwoViewOptions):
    global_scale: Tuple[float, float] = (0.14, 1.0)
    local_views: int = 6
    local_scale: Tuple[float, float] = (0.05, 0.14)
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    blur: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes of ``scores`` (rows: samples, columns: prototypes): rows sum to 1, every prototype
    gets an equal share of the samples (Algorithm 1 of the paper)."""
    q = torch.exp(scores / epsilon).T  # prototypes x samples
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= b
    return (q * b).T


def swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss: the codes of every global crop i predicted from every other crop's scores, averaged over the
    other crops and over the global crops (``codes[i]`` belongs to crop i)."""
    loss = 0.0
    for i, q in enumerate(codes):
        others = [v for v in range(len(scores)) if v != i]
        loss = loss + sum(-(q * F.log_softmax(scores[v] / temperature, dim=1)).sum(1).mean() for v in others
                          ) / len(others)
    return loss / len(codes)


class SwAV(nn.Module):
    """Online codes from Sinkhorn-Knopp on the global crops, predicted from the other crops."""

    name = "swav"

    def __init__(self, opts: SwAVOptions) -> None:
        super().__init__()
        if opts.temperature <= 0 or opts.epsilon <= 0 or opts.sinkhorn_iterations < 1 or opts.queue_length < 0:
            raise RtlabError("objective.temperature and objective.epsilon must be positive, "
                             "objective.sinkhorn_iterations >= 1 and objective.queue_length >= 0")
        self.opts = opts
        self.queues = nn.ModuleList()

    def setup(self, run):
        head = run.student.head
        if not (hasattr(head, "bottleneck") and hasattr(head, "logits") and hasattr(head, "last")):
            raise RtlabError("objective=swav needs a head with an embedding and a prototype layer (head=swav)")
        if self.opts.queue_length:
            n_global = getattr(run.augment, "global_views", None) or 2
            dim = head.last.weight.shape[1]
            self.queues = nn.ModuleList(FeatureQueue(self.opts.queue_length, dim, None, run.device, run.dtype)
                                        for _ in range(n_global))
        return []

    def codes(self, scores: torch.Tensor, queued: torch.Tensor | None) -> torch.Tensor:
        """The codes of this process's rows, from Sinkhorn over the global batch (and the queue's scores)."""
        everyone, start = distributed.gather_with_grad(scores.detach())  # no gradient: a plain gather
        if queued is not None:
            everyone = torch.cat([everyone, queued])
        return sinkhorn(everyone, self.opts.epsilon, self.opts.sinkhorn_iterations)[start:start + len(scores)]

    def loss(self, run, views, index):
        head = run.student.head
        with torch.no_grad():  # unit-norm prototypes before the step (SwAV's code)
            head.last.weight.copy_(F.normalize(head.last.weight, dim=1))
        n_global = global_view_count(run.augment, len(views))
        if n_global < 1 or len(views) < 2:
            raise RtlabError(f"objective=swav needs at least two views, got {len(views)}; use augment=swav")
        z = [wide(e) for e in forward_views(lambda x: head.bottleneck(run.student.encoder(x)), views)]
        scores = [wide(head.logits(e)) for e in z]
        use_queue = bool(self.queues) and run.epoch >= self.opts.queue_start_epoch
        codes = []
        for i in range(n_global):
            queued = None
            if use_queue and self.queues[i].full():
                queued = self.queues[i].rows.to(scores[i].dtype) @ head.last.weight.detach().to(scores[i].dtype).T
            codes.append(self.codes(scores[i], queued))
        loss = swapped_prediction(scores, codes, self.opts.temperature)
        if use_queue:
            for i in range(n_global):
                self.queues[i].push(z[i])
        with torch.no_grad():  # prototypes that are some image's strongest code in the global batch
            best = torch.cat(codes).argmax(1)
            used = torch.zeros(codes[0].shape[1], device=best.device).index_fill_(0, best, 1.0)
            distributed.all_reduce_([used])
        return loss, {"prototypes_used": (used > 0).sum().float()}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "swav", SwAV, SwAVOptions)
    registry.add("head", "swav", dino_head, SwAVHeadOptions,
                 doc="SwAV's head: linear 2048, BN, ReLU, linear 128, L2 norm, 3,000 prototypes (no bias)")
    registry.add("augment", "swav", MultiCrop, SwAVAugmentOptions,
                 doc="SwAV's multi-crop: 2 global (scale 0.14-1) + 6 local (0.05-0.14) crops, colour distortion "
                     "of strength 1, grayscale, blur p 0.5")
    add_method(registry, "swav",
               {"teacher": "random", "student": "copy", "updater": "frozen", "objective": "swav", "head": "swav",
                "augment": "swav"},
               {"optimizer": {"freeze_last_layer_epochs": 1}},
               doc="online clustering: Sinkhorn codes swapped between views (Caron et al., NeurIPS 2020)")
