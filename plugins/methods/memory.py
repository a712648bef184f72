"""Banks of past embeddings (MoCo's queue of negatives, NNCLR's support set, SwAV's queue) and the arithmetic the
contrastive objectives share.

A :class:`FeatureQueue` is an ``nn.Module`` whose rows and write position are **buffers**, so the objective that
owns it saves and restores it with the training state (a resumed run continues with the same negatives; lightly's
banks are non-persistent buffers and restart empty). Under data parallelism every process pushes the rows of the
global batch (gathered in rank order), so all processes hold the queue one process would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import RtlabError, distributed


class FeatureQueue(nn.Module):
    """The last ``size`` rows pushed (first in, first out, as a ring), initialised to random unit vectors
    (``seed``: MoCo, NNCLR) or zeros (``seed=None``: SwAV, which uses the queue once it is full)."""

    def __init__(self, size: int, dim: int, seed: int | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        if size <= 0:
            raise RtlabError(f"a queue needs a positive size, got {size}")
        if seed is None:
            rows = torch.zeros(size, dim, dtype=dtype)
        else:
            rows = F.normalize(torch.randn(size, dim, generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64), dim=1).to(dtype)
        self.register_buffer("rows", rows.to(device))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long, device=device))  # the next row written
        self.register_buffer("count", torch.zeros((), dtype=torch.long, device=device))  # rows pushed, at most size
        self._full = False  # host-side cache of count == size (once full, a queue stays full)

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        """Append this process's rows ``x`` — every process's, in rank order, under data parallelism — dropping
        the oldest. No host synchronisation: the write position stays on the device."""
        x = distributed.gather_rows(x.detach()).to(self.rows.dtype)
        if len(x) > self.size:
            x = x[-self.size:]
        where = (self.ptr + torch.arange(len(x), device=x.device)) % self.size
        self.rows.index_copy_(0, where, x)
        self.ptr.copy_((self.ptr + len(x)) % self.size)
        self.count.copy_(torch.clamp(self.count + len(x), max=self.size))

    def full(self) -> bool:
        if not self._full:
            self._full = bool(self.count >= self.size)
        return self._full

    def _load_from_state_dict(self, *args, **kwargs):  # a restored queue recomputes its fullness
        super()._load_from_state_dict(*args, **kwargs)
        self._full = False


def nce(rows: torch.Tensor, columns: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other images as negatives: row i's positive is column i, its negatives every other column.
    ``rows`` and ``columns`` are L2-normalised, this process's images; under data parallelism the columns of every
    process are gathered (gradients flow back), so the negatives are the global batch's (MoCo v3, NNCLR)."""
    everyone, start = distributed.gather_with_grad(columns)
    logits = rows @ everyone.T / temperature
    labels = start + torch.arange(len(rows), device=rows.device)
    return F.cross_entropy(logits, labels)


def nce_with_queue(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float
                   ) -> torch.Tensor:
    """MoCo's InfoNCE: each query's positive is its own key, its negatives the queue's rows (all L2-normalised);
    the positive logit is column 0."""
    positive = (queries * keys).sum(-1, keepdim=True)
    logits = torch.cat([positive, queries @ queue.T], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(queries), dtype=torch.long, device=queries.device))
