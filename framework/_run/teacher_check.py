"""The setup check of the teacher: embeddings of a batch of training images that are degenerate (near-zero, the
same for every image, or confined to a line) make every distillation target alike, so the student learns nothing
and the probes score chance — with exit code 0. :func:`check_teacher` refuses such a teacher before training
(or warns, where the embeddings are merely suspicious) instead of letting the run end silently at chance.

The inputs are standardised (zero mean, unit variance per channel); a healthy random network keeps embeddings
of RMS ~0.01–10 with a spread across images of at least a few per cent of it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from framework._base.errors import RtlabError

log = logging.getLogger("rtlab")

SAMPLE = 128  # training images the check embeds
DEAD_SPREAD = 1e-6  # spread across images (RMS of the centred embeddings) below which they are numerically one point
WEAK_RMS = 1e-3  # embedding RMS below which heads and probes work at the edge of their epsilons
WEAK_SPREAD = 1e-2  # spread / RMS below which the images barely differ
RANK_TOL = 1e-3  # singular values below this fraction of the largest do not count towards the rank


def embedding_stats(emb: Any) -> dict[str, float]:
    """RMS, spread across images (RMS after subtracting the mean embedding) and numerical rank of (N, D)
    embeddings, in float64; ``finite`` is 0.0 when any value is NaN or infinite."""

    e = emb.detach().double().flatten(1).cpu()
    if not torch.isfinite(e).all():
        return {"finite": 0.0, "rms": float("nan"), "spread": float("nan"), "rank": 0.0, "width": e.shape[1]}
    centred = e - e.mean(0, keepdim=True)
    spread = float(centred.pow(2).mean().sqrt())
    sv = torch.linalg.svdvals(centred) if spread > 0 else torch.zeros(1, dtype=e.dtype)
    rank = float((sv > sv[0] * RANK_TOL).sum()) if spread > 0 else 0.0
    return {"finite": 1.0, "rms": float(e.pow(2).mean().sqrt()), "spread": spread, "rank": rank,
            "width": e.shape[1]}


def problems(stats: dict[str, float], n: int) -> tuple[list[str], list[str]]:
    """(fatal, suspicious) findings for :func:`embedding_stats` of ``n`` images."""
    if not stats["finite"]:
        return ["its embeddings are not finite"], []
    fatal, weak = [], []
    rms, spread, rank = stats["rms"], stats["spread"], stats["rank"]
    if spread < DEAD_SPREAD:
        fatal.append(f"its embeddings have RMS {rms:.2g} and differ across images by {spread:.2g}: every image "
                     "gets numerically the same embedding")
        return fatal, weak
    if rms < WEAK_RMS:
        weak.append(f"its embeddings are tiny (RMS {rms:.2g})")
    if spread < WEAK_SPREAD * rms:
        weak.append(f"its embeddings barely differ across images (spread {spread:.2g} for RMS {rms:.2g})")
    min_rank = max(2, min(n, int(stats["width"])) // 32)
    if rank < min_rank:
        weak.append(f"its embeddings of {n} images span only {int(rank)} of {int(stats['width'])} dimensions")
    return fatal, weak


def check_teacher(run: Any) -> dict[str, float]:
    """Embed up to :data:`SAMPLE` training images with the run's teacher (in the mode it trains in; batch-norm
    buffers restored afterwards); raise an :class:`RtlabError` for a degenerate teacher, warn (log and
    ``summary["warnings"]``) for a suspicious one. Returns the statistics (``summary["teacher_embedding"]``)."""

    teacher = run.teacher
    x = run.prepare(run.data.train.images[:SAMPLE])
    buffers = [b.detach().clone() for b in teacher.buffers()]
    try:
        with torch.no_grad():
            emb = getattr(teacher, "embed", teacher)(x)  # a plugin's teacher may be a plain module
    finally:
        with torch.no_grad():
            for b, saved in zip(teacher.buffers(), buffers):
                b.copy_(saved)
    stats = embedding_stats(emb)
    fatal, weak = problems(stats, len(x))
    bb = run.cfg.backbone
    what = f"the teacher (backbone '{bb.name}', init {bb.get('init', '?')}, teacher={run.cfg.teacher.name})"
    if fatal:
        raise RtlabError(f"{what} is degenerate: {'; '.join(fatal)}, so the student would learn nothing and the "
                         "probes would score chance; try backbone.init=timm (or paper), another backbone "
                         "(rtlab backbones PATTERN), or larger inputs (data.image_size=64)")
    if weak:
        msg = f"{what} may be degenerate: {'; '.join(weak)}; results may sit at chance level"
        log.warning(msg)
        run.summary.setdefault("warnings", []).append(msg)
    run.summary["teacher_embedding"] = {k: v for k, v in stats.items() if k != "finite"}
    return stats
