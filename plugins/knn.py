"""k-nearest-neighbour probe on frozen embeddings, chunked on the device.

* ``metric=l2`` + ``vote=majority`` (default) — the paper's probe (PAPER.md §3): L2 distance on raw features,
  unweighted majority vote of the k = 20 nearest train embeddings (ties go to the smallest label);
* ``metric=cosine`` + ``vote=weighted`` — DINO's: cosine similarity, votes weighted by exp(sim / T), T = 0.07.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int = 20,
                metric: str = "l2", vote: str = "majority", temperature: float = 0.07, num_classes: int = 0,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted labels of ``test`` rows from their ``k`` nearest ``train`` rows (memory: chunk x N_train)."""
    if metric not in ("l2", "cosine") or vote not in ("majority", "weighted"):
        raise RtlabError(f"knn: metric must be l2|cosine and vote majority|weighted, got {metric}/{vote}")
    k = min(k, len(train))
    num_classes = num_classes or int(train_labels.max()) + 1
    train = train.float()
    if metric == "cosine":
        train = F.normalize(train, dim=1)
    else:
        train_sq = train.pow(2).sum(1)
    preds = []
    for i in range(0, len(test), chunk):
        q = test[i:i + chunk].float()
        if metric == "cosine":
            q = F.normalize(q, dim=1)
            score = q @ train.T  # larger is closer
        else:  # -‖q − x‖² up to the per-row constant ‖q‖²
            score = torch.addmm(train_sq.unsqueeze(0), q, train.T, beta=-1.0, alpha=2.0)
        top, idx = score.topk(k, dim=1)
        neighbours = train_labels[idx]
        if vote == "majority":
            weights = torch.ones_like(top)
        else:
            weights = (top / temperature).exp() if metric == "cosine" else F.softmax(top, dim=1)
        votes = torch.zeros(len(q), num_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, neighbours, weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=test.device)


@dataclass
class KNNOptions:
    k: int = 20
    metric: str = "l2"  # l2 (paper) | cosine (DINO)
    vote: str = "majority"  # majority (paper) | weighted (DINO: exp(sim / temperature))
    temperature: float = 0.07
    chunk: int = 1024  # test rows per distance block


class KNNProbe:
    """k-NN accuracy of the test split against the train split (metric ``knn``)."""

    def __init__(self, opts: KNNOptions) -> None:
        if opts.k <= 0:
            raise RtlabError(f"evaluator.knn.k must be positive, got {opts.k}")
        if opts.metric not in ("l2", "cosine") or opts.vote not in ("majority", "weighted"):
            raise RtlabError(f"evaluator.knn.metric must be l2 or cosine and evaluator.knn.vote majority or weighted, "
                             f"got {opts.metric}/{opts.vote}")
        self.opts = opts

    def evaluate(self, features, run):
        if features.train_labels.min() < 0:
            raise RtlabError("the k-NN probe needs labels, but the dataset has none; set data.label_column "
                             "or drop the probe with evaluator=[]")
        o = self.opts
        pred = knn_predict(features.train, features.train_labels, features.test, o.k, o.metric, o.vote,
                           o.temperature, features.num_classes, o.chunk)
        return {"knn": float((pred == features.test_labels).float().mean())}


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "knn", KNNProbe, KNNOptions)
