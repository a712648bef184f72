"""Joint-embedding objectives without a target network (SimCLR, Barlow Twins, VICReg): the student embeds every
view and a loss compares the embeddings of two views of the same images, for every unordered pair of views (two
views: one pair). The teacher is not used; it stays the random init the student started from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping

import torch

from plugins.distill.losses import wide
from plugins.networks.heads import MLPHeadOptions
from plugins.methods.prediction import needs_two_views


@dataclass
class WideProjectorOptions(MLPHeadOptions):
    """Barlow Twins' projector, which VICReg reuses as its expander: 3 linear layers of 8192, the last without bias."""

    hidden_dims: List[int] = field(default_factory=lambda: [8192, 8192])
    out_dim: int = 8192
    output_bias: bool = False


class JointEmbedding:
    """Embeds every view with the student and averages ``pair_loss`` over the pairs of views."""

    name = "joint_embedding"
    together = False  # True: all views go through the student as one batch (shared BatchNorm statistics)

    def setup(self, run):
        return []

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """The loss of two views' embeddings (rows are the same images) and detached parts to log."""
        raise NotImplementedError

    def embeddings(self, run, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's embedding of every view (as one batch with ``together`` and views of one shape)."""
        needs_two_views(self.name, len(views))
        if self.together and len({v.shape for v in views}) == 1:
            return list(wide(run.student(torch.cat(views))).chunk(len(views)))
        return [wide(run.student(v)) for v in views]

    def loss(self, run, views, index):
        embeddings = self.embeddings(run, views)
        pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
        total, logs = None, {}
        for i, j in pairs:
            value, parts = self.pair_loss(embeddings[i], embeddings[j])
            total = value if total is None else total + value
            for k, v in parts.items():
                logs[k] = logs[k] + v if k in logs else v
        return total / len(pairs), {k: v / len(pairs) for k, v in logs.items()}
