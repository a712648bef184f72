"""Method ``moco_v2`` — Momentum Contrast with a queue of negatives (He et al., "Momentum Contrast for Unsupervised
Visual Representation Learning", CVPR 2020; Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive
Learning", arXiv 2003.04297: the MLP head, blur and cosine schedule of v2).

* query encoder = the student: encoder + projection MLP (``head=moco_v2``: linear 2048, ReLU, linear 128, no BN);
* key encoder = the teacher: an exponential moving average of the student with constant momentum 0.999
  (``updater=ema``, BN with batch statistics), started as a copy of the student;
* loss: InfoNCE at temperature 0.2 — the query q of view 1 against its key k of view 2 (positive) and the K =
  65,536 keys of earlier batches in the queue (negatives); all L2-normalised. As in the paper's Algorithm 1 the loss
  is one-directional (q from view 1, k from view 2), and the batch's keys replace the oldest ones in the queue after
  the loss;
* views: MoCo v2's augmentation, which SimSiam later reused (``augment=simsiam``: crops of scale 0.2–1, flip,
  colour jitter p 0.8 (0.4, 0.4, 0.4, 0.1), grayscale p 0.2, blur p 0.5).

The queue (``objective.queue_size`` rows, the projection width) starts as random unit vectors drawn from the
``queue`` stream of ``train.seed``, is a buffer of the objective (saved with the training state, resumed exactly) and,
under data parallelism, receives the keys of the global batch on every process. No shuffling BN: the key encoder's
BatchNorm sees the whole (per-process) key batch, as in single-GPU re-implementations (lightly, solo-learn).

The optimiser is the experiment's (MoCo v2: SGD lr 0.03 · batch/256, momentum 0.9, weight decay 1e-4, cosine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import RtlabError, hookimpl, stream_seed
from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions, mlp_head
from plugins.methods import add_method
from plugins.methods.memory import FeatureQueue, nce_with_queue
from plugins.methods.prediction import needs_two_views, output_dim


@dataclass
class MoCoV2Options:
    temperature: float = 0.2  # τ of the logits
    queue_size: int = 65536  # K, negatives kept from earlier batches


@dataclass
class MoCoV2HeadOptions(MLPHeadOptions):
    hidden_dims: List[int] = field(default_factory=lambda: [2048])
    out_dim: int = 128
    batchnorm: bool = False


class MoCoV2(nn.Module):
    """The query of one view is contrasted with its momentum key (positive) and a queue of past keys."""

    name = "moco_v2"

    def __init__(self, opts: MoCoV2Options) -> None:
        super().__init__()
        if opts.temperature <= 0 or opts.queue_size <= 0:
            raise RtlabError(f"objective.temperature and objective.queue_size must be positive, got "
                             f"{opts.temperature} and {opts.queue_size}")
        self.opts = opts
        self.queue: FeatureQueue | None = None

    def setup(self, run):
        dim = output_dim(run.student.head, run.student.embed_dim)
        self.queue = FeatureQueue(self.opts.queue_size, dim, stream_seed(run.cfg.train.seed, "queue"), run.device,
                                  run.dtype)
        return []

    def loss(self, run, views, index):
        needs_two_views(self.name, len(views))
        q = F.normalize(wide(run.student(views[0])), dim=1)
        with torch.no_grad():
            k = F.normalize(wide(run.teacher(views[1])), dim=1)
        # a copy: the queue changes in place below, and the backward pass needs the negatives of this step
        loss = nce_with_queue(q, k, self.queue.rows.to(q.dtype, copy=True), self.opts.temperature)
        with torch.no_grad():
            positive = (q * k).sum(-1).mean()
        self.queue.push(k)
        return loss, {"positive_cosine": positive}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "moco_v2", MoCoV2, MoCoV2Options)
    registry.add("head", "moco_v2", mlp_head, MoCoV2HeadOptions,
                 doc="MoCo v2's projection MLP: linear 2048, ReLU, linear 128 (no BN)")
    add_method(registry, "moco_v2",
               {"teacher": "random", "student": "copy", "updater": "ema", "objective": "moco_v2", "head": "moco_v2",
                "augment": "simsiam"},
               {"updater": {"momentum": 0.999, "final_momentum": 0.999, "bn_mode": "from_data"}},
               doc="momentum key encoder and a queue of negatives (He et al., CVPR 2020; Chen et al., 2020)")
