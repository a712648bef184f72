"""Representation metrics (not accuracies: each declares its kind, see :class:`framework.api.MetricKind`).

* ``rankme`` — RankMe, the effective rank of the embedding (Garrido et al. 2023): exp of the entropy of the
  normalised singular values p_i = σ_i / Σσ (+ 1e-7) of the train embeddings (at most 25,600 rows). Between 1
  (collapse) and the dimension; higher is better;
* ``cka`` — linear CKA (Kornblith et al. 2019) between this target's test embeddings and the teacher's
  (``cka_teacher``; not for the teacher itself) and, for the student, its initial weights' (``cka_init``):
  ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred features, in [0, 1]. The other target's test embeddings are extracted
  once per evaluation (``Features.other``), at the same layer;
* ``alignment`` — alignment and uniformity (Wang & Isola 2020) of the L2-normalised test embeddings: ``alignment``
  = the mean ‖u − v‖² over pairs of test images *of the same class* (frozen test images have no augmented views,
  so a class is the positive set), exact from per-class sums; ``uniformity`` = log mean exp(−2‖u − v‖²) over the
  pairs of (at most 4,096) test rows. Both lower is better.

All run on the device-resident features of the evaluation: one SVD, one or two d × d products, one pairwise matrix.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from framework.api import hookimpl, MetricKind, NoOptions

RANKME_ROWS = 25_600
UNIFORMITY_ROWS = 4_096


def rankme(x: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank exp(H(p)), p = σ / ‖σ‖₁ + eps (Garrido et al.'s definition)."""
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same rows (any widths)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    norm = (x.T @ x).norm() * (y.T @ y).norm()
    return float(cross / norm) if norm > 0 else 0.0


def alignment(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean ‖u_i − u_j‖² over same-class pairs i ≠ j of the normalised rows: per class of n rows with sum S,
    Σ_{i≠j} ‖u_i − u_j‖² = 2n(n − 1) − 2(‖S‖² − n)."""
    u = F.normalize(x.double(), dim=1)
    sums = torch.zeros(num_classes, u.shape[1], dtype=u.dtype, device=u.device).index_add_(0, labels, u)
    n = torch.bincount(labels, minlength=num_classes).to(u.dtype)
    pairs = n * (n - 1)
    total = (2 * pairs - 2 * (sums.pow(2).sum(1) - n)).sum()
    return float(total / pairs.sum()) if pairs.sum() > 0 else float("nan")


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """log mean_{i≠j} exp(−t‖u_i − u_j‖²) of the normalised rows."""
    u = F.normalize(x[:UNIFORMITY_ROWS].double(), dim=1)
    n = len(u)
    sq = torch.pdist(u).pow(2)
    return float(torch.logsumexp(-t * sq, 0) - math.log(max(n * (n - 1) // 2, 1)))


class RankMe:
    metric_kinds = {"rankme": MetricKind.number(higher_is_better=True)}

    def __init__(self, opts: NoOptions) -> None:
        self.opts = opts

    def evaluate(self, features, run):
        return {"rankme": rankme(features.train[:RANKME_ROWS])}


class CKA:
    metric_kinds = {"cka_teacher": MetricKind.number(higher_is_better=True),
                    "cka_init": MetricKind.number(higher_is_better=True)}

    def __init__(self, opts: NoOptions) -> None:
        self.opts = opts

    def evaluate(self, features, run):
        out = {}
        if features.target != "teacher":
            out["cka_teacher"] = linear_cka(features.test, features.other("teacher"))
        if features.target == "student":
            out["cka_init"] = linear_cka(features.test, features.other("student_init"))
        return out


class AlignmentUniformity:
    metric_kinds = {"alignment": MetricKind.number(higher_is_better=False),
                    "uniformity": MetricKind.number(higher_is_better=False)}

    def __init__(self, opts: NoOptions) -> None:
        self.opts = opts

    def evaluate(self, features, run):
        out = {"uniformity": uniformity(features.test)}
        if features.test_labels.min() >= 0:
            out["alignment"] = alignment(features.test, features.test_labels, features.num_classes)
        return out


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "rankme", RankMe, NoOptions)
    registry.add("evaluator", "cka", CKA, NoOptions)
    registry.add("evaluator", "alignment", AlignmentUniformity, NoOptions)
