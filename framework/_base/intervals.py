"""Paired gains with bootstrap intervals: a student's metric minus a control's, run by run (same seed), summarised
by the mean and a seeded percentile-bootstrap 95 % interval of the mean."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from framework._base.keys import EMBEDDING, parse_key

RESAMPLES = 10_000
CONTROLS = ("teacher", "teacher_bn", "input")  # random init, BN control, input pixels


def bootstrap_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
                       ) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (None for fewer than 2 values)."""

    v = np.asarray([float(x) for x in values if math.isfinite(float(x))])
    if len(v) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def gain(values: Sequence[float], seed: int = 0) -> dict:
    """``{"mean", "lo", "hi", "n", "excludes_zero"}`` of paired differences (lo/hi None below 2 pairs)."""
    vals = [float(x) for x in values if math.isfinite(float(x))]
    ci = bootstrap_interval(vals, seed=seed)
    mean = sum(vals) / len(vals) if vals else float("nan")
    return {"mean": mean, "lo": ci[0] if ci else None, "hi": ci[1] if ci else None, "n": len(vals),
            "excludes_zero": bool(ci and (ci[0] > 0 or ci[1] < 0))}


def control_key(key: str, control: str) -> str | None:
    """The control's key of a student key (``knn/student.L-2@cifar100`` → ``knn/teacher.L-2@cifar100``), None
    when ``key`` is not a student's or the control has no such key (pixels have no layers)."""
    parsed = parse_key(key)
    if parsed is None or parsed.target != "student" or (control == "input" and parsed.layer != EMBEDDING):
        return None
    return str(parsed.with_(target=control))


def format_gain(g: dict, accuracy: bool) -> str:
    """``+5.40 [+4.10, +6.70] *`` (points for accuracies; * the interval excludes 0), ``+5.40 (n = 1)``."""
    scale, fmt = (100.0, "{:+.2f}") if accuracy else (1.0, "{:+.4g}")
    if g["n"] == 0:
        return "-"
    text = fmt.format(scale * g["mean"])
    if g["lo"] is None:
        return f"{text} (n = {g['n']})"
    return f"{text} [{fmt.format(scale * g['lo'])}, {fmt.format(scale * g['hi'])}]" + (" *" if g["excludes_zero"]
                                                                                       else "")
