"""An external rtlab plugin: contributes a loss, an evaluator and an SSL method, selected by name, with no change to
rtlab. The method, ``cosine_teacher``, is distillation from a frozen random teacher with this plugin's cosine loss:
``rtlab train method=cosine_teacher``, and ``rtlab compare`` compares it with the built-in methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework._base.metrics import MetricKind

__version__ = "0.3.1"


@dataclass
class CosineLossOptions:
    scale: float = 1.0  # multiplies the loss


class CosineLoss:
    """1 − cosine similarity between student and teacher outputs."""

    def __init__(self, opts: CosineLossOptions) -> None:
        self.opts = opts

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor):
        cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()
        return self.opts.scale * (1.0 - cos), {"cosine": cos.detach()}


@dataclass
class SpreadOptions:
    eps: float = 1e-12


class EmbeddingSpread:
    """Mean per-dimension standard deviation of the test embeddings (collapse → 0): a plain number, not an
    accuracy, so tables print it as it is."""

    metric_kinds = {"spread": MetricKind.number(higher_is_better=True)}

    def __init__(self, opts: SpreadOptions) -> None:
        self.opts = opts

    def evaluate(self, features, run):
        return {"spread": float(features.test.std(0).mean().clamp_min(self.opts.eps))}


@hookimpl
def rtlab_register(registry):
    registry.add("loss", "cosine", CosineLoss, CosineLossOptions)
    registry.add("evaluator", "spread", EmbeddingSpread, SpreadOptions)
    registry.add_preset("method", "cosine_teacher",
                        {"teacher": "random", "student": "interpolated", "updater": "frozen",
                         "objective": "distillation", "loss": "cosine", "head": "dino", "augment": "identity"},
                        {"objective": {"pairing": "same", "center_momentum": None}},
                        doc="distillation from a frozen random teacher with the cosine loss")
