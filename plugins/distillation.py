"""Teacher–student distillation (PAPER.md §2.1, §2.4) and its losses.

Objective ``distillation``: the teacher (no gradients) and the student see the same views; the loss component
compares their outputs view by view. Loss ``ce``: cross-entropy between softmax(teacher/τ_t) and
log-softmax(student/τ_s) — the same gradient as KL(teacher‖student) for a frozen teacher. The KL itself is
logged (``train/kl``), computed directly so the ~1e-5 values of the paper's setting are not lost to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError


@dataclass
class CrossEntropyOptions:
    teacher_temp: float = 1.0  # τ_t (the paper: 1; DINO: 0.04)
    student_temp: float = 1.0  # τ_s (the paper: 1; DINO: 0.1)


class CrossEntropy:
    """CE(softmax(t/τ_t), log_softmax(s/τ_s)); logs the KL divergence and the teacher's entropy."""

    def __init__(self, opts: CrossEntropyOptions) -> None:
        if opts.teacher_temp <= 0 or opts.student_temp <= 0:
            raise RtlabError("loss.teacher_temp and loss.student_temp must be positive")
        self.opts = opts

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor):
        log_q = F.log_softmax(student.float() / self.opts.student_temp, dim=-1)
        log_p = F.log_softmax(teacher.float() / self.opts.teacher_temp, dim=-1)
        p = log_p.exp()
        ce = -(p * log_q).sum(-1).mean()
        with torch.no_grad():
            kl = (p * (log_p - log_q)).sum(-1).mean()
            entropy = -(p * log_p).sum(-1).mean()
        return ce, {"kl": kl, "teacher_entropy": entropy}


class TeacherCache:
    """A frozen, eval-mode teacher on deterministic views gives every image the same output forever, so its
    head input (the normalised bottleneck) is computed once per image and view — lazily, the first time the image
    appears in a batch — and only the last layer runs afterwards. The first epoch is computed exactly as without
    the cache; later epochs reuse those values (bit-identical in the head's input dtype)."""

    def __init__(self, size: int, views: int, device: torch.device) -> None:
        self.size = size
        self.store: list[torch.Tensor | None] = [None] * views
        self.filled = [torch.zeros(size, dtype=torch.bool, device=device) for _ in range(views)]

    @staticmethod
    def unusable(run) -> str | None:
        """Why the cache cannot be exact for this run (None when it can)."""
        if not run.teacher_frozen:
            return "the teacher is updated"
        if run.teacher.training:
            return "the teacher's BatchNorm runs in train mode"
        if not getattr(run.augment, "deterministic", False):
            return "the views are random"
        head = run.teacher.head
        if not (hasattr(head, "bottleneck") and hasattr(head, "logits")):
            return "the head does not split into bottleneck and last layer"
        return None

    def __call__(self, teacher, views: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for v, view in enumerate(views):
            missing = ~self.filled[v][index]
            if bool(missing.any()):
                todo = missing.nonzero().squeeze(1)
                z = teacher.head.bottleneck(teacher.encoder(view if bool(missing.all()) else view[todo]))
                if self.store[v] is None:
                    self.store[v] = torch.empty(self.size, z.shape[1], dtype=z.dtype, device=z.device)
                self.store[v][index[todo]] = z.to(self.store[v].dtype)
                self.filled[v][index[todo]] = True
            outs.append(teacher.head.logits(self.store[v][index]))
        return outs


@dataclass
class DistillationOptions:
    cache_teacher: bool = True  # reuse the frozen teacher's head input per image where that is exact


class Distillation:
    """The student matches the teacher's output on the same view (single-crop distillation)."""

    def __init__(self, opts: DistillationOptions) -> None:
        self.opts = opts
        self.cache: TeacherCache | None = None

    def setup(self, run):
        if run.loss_fn is None:
            raise RtlabError("objective=distillation needs a loss component (e.g. loss=ce)")
        self.cache = None
        run.summary["teacher_cache"] = "off"
        if self.opts.cache_teacher:
            why = TeacherCache.unusable(run)
            if why is None:
                n_views = len(run.augment.views(run.data.train.images[:1].float() / 255.0, run.aug_gen))
                self.cache = TeacherCache(len(run.data.train), n_views, run.device)
            run.summary["teacher_cache"] = why or "on"
        return []

    # The cache is state: a resumed run must reuse the values computed before the interruption (recomputing them
    # in other batches can differ in the last bits), so it travels with the training state (framework/state.py).
    def state_dict(self):
        if self.cache is None:
            return {}
        store = [None if t is None else torch.where(f[:, None], t, 0)  # rows not filled yet are uninitialised
                 for t, f in zip(self.cache.store, self.cache.filled)]
        return {"store": store, "filled": list(self.cache.filled)}

    def load_state_dict(self, state):
        if self.cache is None or not state:
            return
        self.cache.store = [None if t is None else t.to(self.cache.filled[0].device) for t in state["store"]]
        self.cache.filled = [t.to(self.cache.filled[0].device) for t in state["filled"]]

    def teacher_outputs(self, run, views, index):
        with torch.no_grad():
            if self.cache is not None:
                return self.cache(run.teacher, views, index)
            return [run.teacher(v) for v in views]

    def loss(self, run, views, index):
        targets = self.teacher_outputs(run, views, index)
        total = None
        logs: dict[str, torch.Tensor] = {}
        for view, target in zip(views, targets):
            value, parts = run.loss_fn(run.student(view), target)
            total = value if total is None else total + value
            for k, v in parts.items():
                logs[k] = logs[k] + v if k in logs else v
        n = len(views)
        return total / n, {k: v / n for k, v in logs.items()}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "distillation", Distillation, DistillationOptions)
    registry.add("loss", "ce", CrossEntropy, CrossEntropyOptions)
