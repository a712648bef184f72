"""An external rtlab plugin, written against the documented face (``framework.api``) only: a loss, a number-valued
evaluator, an SSL method, an init scheme and an analysis of finished runs, selected by name with no change to rtlab.

* ``loss=cosine``; the method ``cosine_teacher`` (distillation from a frozen random teacher with the cosine loss:
  ``rtlab train method=cosine_teacher``; ``rtlab compare`` compares it with the built-in methods);
* ``evaluator=[knn,spread]``: the embeddings' spread, a plain number (``compare.metrics=[knn,spread]`` tables it);
* ``backbone.init=orthogonal``: the paper's init, then orthogonal conv and linear weights;
* ``rtlab analyze ncm RUN``: nearest-class-mean accuracy of a finished run's student and teacher embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework.api import AnalysisOptions, MetricKind, hookimpl

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


class OrthogonalInit:
    """Orthogonal weights (Saxe et al., 2014) for every conv and linear layer, after the paper's init (which keeps
    residual branches live and norm layers at weight 1)."""

    base = "paper"

    def __init__(self, opts) -> None:
        self.opts = opts

    def apply(self, model: torch.nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.orthogonal_(m.weight)


@dataclass
class NCMOptions(AnalysisOptions):
    layer: int = -1  # -1: the embedding; -2: the stage before the last (pooled)


class NearestClassMean:
    """Nearest-class-mean accuracy on the test split of each studied run, for its student and its teacher."""

    def __init__(self, opts: NCMOptions) -> None:
        self.opts = opts

    def run(self, ctx) -> dict:
        out = {}
        for folder in ctx.runs:
            run = ctx.open_run(folder, device="cpu")
            train_y, test_y, k = run.data.train.labels, run.data.test.labels, run.data.num_classes
            accs = {}
            for part in ("student", "teacher"):
                train = run.embed(part, "train", layers=self.opts.layer)
                test = run.embed(part, "test", layers=self.opts.layer)
                means = torch.zeros(k, train.shape[1]).index_add_(0, train_y, train)
                means /= torch.bincount(train_y, minlength=k).clamp_min(1)[:, None]
                accs[part] = float((torch.cdist(test, means).argmin(1) == test_y).float().mean())
            out[str(run.folder)] = {**accs, "dataset": run.cfg.data.name, "steps": run.summary["steps"]}
        return out

    def render(self, out_dir, results: dict) -> str:
        rows = [f"| {r} | {v['student']:.4f} | {v['teacher']:.4f} |" for r, v in results.items()]
        return "\n".join(["| run | student NCM | teacher NCM |", "|---|---|---|", *rows])


@hookimpl
def rtlab_register(registry):
    registry.add("init", "orthogonal", OrthogonalInit)
    registry.add("analysis", "ncm", NearestClassMean, NCMOptions)
    registry.add("loss", "cosine", CosineLoss, CosineLossOptions)
    registry.add("evaluator", "spread", EmbeddingSpread, SpreadOptions)
    registry.add_preset("method", "cosine_teacher",
                        {"teacher": "random", "student": "interpolated", "updater": "frozen",
                         "objective": "distillation", "loss": "cosine", "head": "dino", "augment": "identity"},
                        {"objective": {"pairing": "same", "center_momentum": None}},
                        doc="distillation from a frozen random teacher with the cosine loss")
