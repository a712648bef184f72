"""Teacher–student distillation (docs/paper.md#objective): objective ``distillation``.

The teacher (no gradients) sees the global views — all views unless the augmentation says which are global
(``global_views``, e.g. DINO's two large crops) — and the student sees every view; views of one size go through
a network together. The loss component compares one teacher output with one student output; ``pairing`` says
which pairs (teacher view i, student view j) count, and the loss is their mean:

* ``same`` — i = j: every global view against itself (the paper's single-crop loss);
* ``opposite`` — i ≠ j: every student view against every *other* global view (DINO);
* ``all`` — every pair.

``cache_teacher`` (on by default) computes a frozen, eval-mode teacher's head input once per image where the views
are deterministic (:class:`TeacherCache`); the losses are the same as without it.

``center_momentum`` turns on DINO's centering: the teacher's outputs have a running centre c subtracted before the
loss, and c ← m·c + (1 − m)·(mean teacher output of the step) afterwards. None (the default, the paper) = off. The
centre is part of the objective's ``state_dict``, so the training state restores it on every rank.
:class:`Centering` and :func:`view_pairs` are usable on their own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch

from framework.api import distributed, forward_views, hookimpl, RtlabError

PAIRINGS = ("same", "opposite", "all")


def view_pairs(pairing: str, teacher_views: int, student_views: int) -> list[tuple[int, int]]:
    """(teacher view, student view) index pairs that enter the loss."""
    if pairing not in PAIRINGS:
        raise RtlabError(f"objective.pairing must be one of {', '.join(PAIRINGS)}, got '{pairing}'")
    keep = {"same": lambda i, j: i == j, "opposite": lambda i, j: i != j, "all": lambda i, j: True}[pairing]
    pairs = [(i, j) for i in range(teacher_views) for j in range(student_views) if keep(i, j)]
    if not pairs:
        raise RtlabError(f"objective.pairing={pairing} pairs nothing with {teacher_views} teacher and "
                         f"{student_views} student view(s); use an augmentation with several views (augment="
                         "multicrop) or objective.pairing=same")
    return pairs


def global_view_count(augment, views: int) -> int:
    """How many leading views are global (the teacher's): the augmentation's ``global_views``, else all."""
    n = getattr(augment, "global_views", None)
    return views if n is None else min(int(n), views)


class Centering:
    """DINO's centering of the teacher's outputs: subtract a running mean updated with ``momentum``.

    Under torchrun the step's mean is taken over the global batch (the shards' sums and counts are all-reduced),
    so every process holds the same centre, as one process on the global batch would."""

    def __init__(self, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise RtlabError(f"objective.center_momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.center: torch.Tensor | None = None

    def __call__(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The centred outputs (with the centre before this step's update)."""
        if self.center is None:
            self.center = torch.zeros(outputs[0].shape[-1], device=outputs[0].device, dtype=torch.float32)
        return [o.float() - self.center for o in outputs]

    @torch.no_grad()
    def update(self, outputs: list[torch.Tensor]) -> None:
        batch = torch.cat(outputs).float()
        if distributed.active():
            sums = torch.stack([batch.sum(0), torch.full_like(batch[0], len(batch))])
            distributed.all_reduce_([sums])
            batch_center = sums[0] / sums[1]
        else:
            batch_center = batch.mean(0)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)


class TeacherCache:
    """A frozen, eval-mode teacher on deterministic views gives every image the same output forever, so its
    head input (the normalised bottleneck) is computed once per image and view — lazily, the first time the image
    appears in a batch — and only the last layer runs afterwards. The first epoch is computed exactly as without
    the cache; later epochs reuse those values (bit-identical in the head's input dtype)."""

    def __init__(self, size: int, views: int, device: torch.device) -> None:
        self.size = size
        self.store: list[torch.Tensor | None] = [None] * views
        self.filled = [torch.zeros(size, dtype=torch.bool, device=device) for _ in range(views)]
        # host-side: every image of view v is stored; from then on a step reads the cache without a device sync
        self.complete = [False] * views

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
            missing = None if self.complete[v] else ~self.filled[v][index]
            if missing is not None and bool(missing.any()):
                todo = missing.nonzero().squeeze(1)
                z = teacher.head.bottleneck(teacher.encoder(view if bool(missing.all()) else view[todo]))
                if self.store[v] is None:
                    self.store[v] = torch.empty(self.size, z.shape[1], dtype=z.dtype, device=z.device)
                self.store[v][index[todo]] = z.to(self.store[v].dtype)
                self.filled[v][index[todo]] = True
                self.complete[v] = bool(self.filled[v].all())
            outs.append(teacher.head.logits(self.store[v][index]))
        return outs


@dataclass
class DistillationOptions:
    pairing: str = "same"  # same (the paper) | opposite (DINO) | all
    center_momentum: Optional[float] = None  # teacher-output centering momentum; None: off (the paper), DINO: 0.9
    cache_teacher: bool = True  # reuse the frozen teacher's head input per image where that is exact


class Distillation:
    """The student matches the teacher's outputs on paired views."""

    def __init__(self, opts: DistillationOptions) -> None:
        view_pairs(opts.pairing, 2, 2)  # validates the name
        self.opts = opts
        self.centering = Centering(opts.center_momentum) if opts.center_momentum is not None else None
        self.cache: TeacherCache | None = None
        self.loss_diagnoses = True  # the loss takes diagnose= (set in setup)

    def setup(self, run):
        if run.loss_fn is None:
            raise RtlabError("objective=distillation needs a loss component (e.g. loss=ce)")
        self.cache = None
        self.device = run.device
        self.loss_diagnoses = "diagnose" in inspect.signature(run.loss_fn).parameters
        run.summary["teacher_cache"] = "off"
        if self.opts.cache_teacher:
            why = TeacherCache.unusable(run)
            if why is None:
                views = run.augment.views(run.data.train.images[:1].float() / 255.0, run.aug_gen)
                self.cache = TeacherCache(len(run.data.train), global_view_count(run.augment, len(views)),
                                          run.device)
            run.summary["teacher_cache"] = why or "on"
        return []

    # The centre and the cache are training state, restored on every rank by framework/_run/state.py. The cache must
    # travel too: a resumed run reuses the values computed before the interruption (recomputing them in other
    # batches can differ in the last bits).
    def state_dict(self):
        state = {}
        if self.centering is not None:
            state["center"] = self.centering.center
        if self.cache is not None:
            state["store"] = [None if t is None else torch.where(f[:, None], t, 0)  # unfilled rows: uninitialised
                              for t, f in zip(self.cache.store, self.cache.filled)]
            state["filled"] = list(self.cache.filled)
        return state

    def load_state_dict(self, state):
        if self.centering is not None and state.get("center") is not None:
            self.centering.center = state["center"].to(self.device, torch.float32).clone()
        if self.cache is not None and "filled" in state:
            self.cache.store = [None if t is None else t.to(self.device) for t in state["store"]]
            self.cache.filled = [t.to(self.device) for t in state["filled"]]
            self.cache.complete = [bool(t.all()) for t in self.cache.filled]

    def teacher_outputs(self, run, views, index):
        """The teacher's outputs on the global views (from the cache where it is exact)."""
        with torch.no_grad():
            if self.cache is not None:
                return self.cache(run.teacher, views, index)
            return forward_views(run.teacher, views)

    def loss(self, run, views, index):
        n_global = global_view_count(run.augment, len(views))
        pairs = view_pairs(self.opts.pairing, n_global, len(views))
        targets = self.teacher_outputs(run, views[:n_global], index)
        if self.centering is not None:
            centred = self.centering(targets)
            self.centering.update(targets)
            targets = centred
        outputs = forward_views(run.student, views)
        set_epoch = getattr(run.loss_fn, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(run.step / max(run.steps_per_epoch, 1))
        total = None
        logs: dict[str, torch.Tensor] = {}
        extra = {"diagnose": run.logging_step} if self.loss_diagnoses else {}
        for i, j in pairs:
            value, parts = run.loss_fn(outputs[j], targets[i], **extra)
            total = value if total is None else total + value
            for k, v in parts.items():
                logs[k] = logs[k] + v if k in logs else v
        n = len(pairs)
        return total / n, {k: v / n for k, v in logs.items()}


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "distillation", Distillation, DistillationOptions)
