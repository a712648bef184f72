"""Points on lines and planes of parameter space, their batch-norm statistics, and classifier evaluation.

A network's running BatchNorm statistics belong to its own weights; a point between two networks has none of
its own. ``bn=reestimate`` (the default) recomputes them on the training images for every point
(:func:`framework.api.bn_control`); ``bn=interpolate`` combines the endpoints' buffers like the weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import bn_control, extract, has_batchnorm, RtlabError

BN_MODES = ("reestimate", "interpolate")


def check_bn_mode(mode: str) -> str:
    if mode not in BN_MODES:
        raise RtlabError(f"analysis.bn must be one of {', '.join(BN_MODES)}, got '{mode}'")
    return mode


def combine(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ·θᵢ for every floating tensor; other tensors (BN batch counters) are taken from the first state.

    Written as a plain weighted sum so that weights (1, 0) and (0, 1) give the endpoints bit for bit.
    """
    first = states[0]
    for s in states[1:]:
        if s.keys() != first.keys():
            diff = sorted(set(s) ^ set(first))
            raise RtlabError(f"the networks do not have the same parameters (e.g. {diff[0]}); they must share an "
                             "architecture")
    out = {}
    for key, value in first.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        total = value.float() * weights[0]
        for s, w in zip(states[1:], weights[1:]):
            total = total + s[key].float().to(value.device) * w
        out[key] = total.to(value.dtype)
    return out


def load_point(net: nn.Module, state: dict[str, torch.Tensor], bn: str, run) -> None:
    """Put ``state`` into ``net`` and give it the BatchNorm statistics of ``bn`` mode."""
    net.load_state_dict(state)
    if bn == "reestimate" and has_batchnorm(net):
        net.load_state_dict(bn_control(net, run.data.train.images, run.placement, run.cfg.eval.batch_size).state_dict())


@torch.no_grad()
def classifier_metrics(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, run) -> dict[str, float]:
    """Error, loss and number of correct predictions of an encoder + classifier network (eval mode), computed as
    the ``classifier`` evaluator computes its accuracy."""
    was = net.training
    net.eval()
    try:
        feats = extract(net.encoder, images, run.placement, run.cfg.eval.batch_size)
        logits = net.classifier(feats).float()
    finally:
        net.train(was)
    correct = int((logits.argmax(1) == labels).sum())
    n = len(labels)
    return {"error": 1.0 - correct / n, "loss": float(F.cross_entropy(logits, labels)), "correct": correct}


def barrier(values: Sequence[float], gammas: Sequence[float]) -> float:
    """max over γ of value(γ) − ((1 − γ)·value(0) + γ·value(1)) (Frankle et al. 2020)."""
    v0, v1 = values[0], values[-1]
    return max(v - ((1 - g) * v0 + g * v1) for v, g in zip(values, gammas))
