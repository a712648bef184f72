"""Student initialisers (docs/paper.md#student-init).

* ``copy`` — θ_S = θ_T (α = 0; the non-contrastive convention);
* ``interpolated`` — θ_S(α) = ((1 − α)·θ_T + α·θ̃)/δ with θ̃ a fresh init from ``seed`` and
  δ = √(α² + (1 − α)²) when ``variance_preserving`` (every parameter tensor, BN affine included; buffers are
  copied from the teacher, as in the reference code);
* ``neighborhood`` — θ_S = (θ_T + ε·θ̃)/√(1 + ε²), the reference code's ε-neighbourhood (the same family as
  ``interpolated`` with ε = α/(1 − α));
* ``independent`` — θ_S = θ̃ (α = 1; classical self-distillation);
* ``checkpoint`` — the encoder (and optionally the head) of the student or teacher of an rtlab checkpoint, e.g. a
  distilled student as the start of supervised training (docs/paper.md#lottery-tickets).

The mixing is computed in float64 and rounded once to the networks' dtype. In float32, α = 1e-10 leaves
(1 − α) = 1 and δ = 1, so the student is numerically almost a copy (docs/paper.md#alpha-in-float32): only weights with
|w| ≲ 1e-4 change. ``train.precision=fp64`` keeps the networks in float64, where the perturbation survives. The
run records the initial teacher–student distance (``teacher_student_distance_init`` in ``summary.json`` and
``teacher_student_distance`` in the epoch-0 evaluation), and a student that is bit-identical to its teacher
although it should not be is reported as a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import torch

from framework.api import clone, hookimpl, load_checkpoint, load_network_state, RtlabError

log = logging.getLogger("rtlab")


def _student(net):
    net.requires_grad_(True)
    net.train()
    return net


def mix_(student, teacher_weight: float, fresh, fresh_weight: float, scale: float):
    """θ_S ← (teacher_weight·θ_S + fresh_weight·θ̃)/scale for every parameter, computed in float64 (in place)."""
    fresh_params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, p in student.named_parameters():
            mixed = p.double().mul_(teacher_weight).add_(fresh_params[name].to(p.device, torch.float64),
                                                        alpha=fresh_weight).div_(scale)
            p.copy_(mixed)
    return student


def warn_if_copy(run, student, teacher, why: str) -> None:
    """Record a warning when a student that should differ from its teacher is bit-identical to it."""
    same = all(torch.equal(a.to(b), b) for a, b in zip(student.parameters(), teacher.parameters()))
    if same:
        msg = (f"the student is bit-identical to its teacher ({why}); in {str(next(student.parameters()).dtype)[6:]} "
               "the perturbation rounds away: use train.precision=fp64 or a larger student.alpha")
        log.warning(msg)
        run.summary.setdefault("warnings", []).append(msg)


@dataclass
class CopyOptions:
    pass


class CopyStudent:
    """The student starts as an exact copy of the teacher (α = 0)."""

    def __init__(self, opts: CopyOptions) -> None:
        self.opts = opts

    def build(self, run, teacher):
        return _student(clone(teacher))


@dataclass
class InterpolatedOptions:
    alpha: float = 1e-10  # locality: 0 = copy of the teacher, 1 = independent init
    seed: int = 1  # seed of the fresh init θ̃
    variance_preserving: bool = True  # divide by √(α² + (1 − α)²)


def interpolate(teacher, fresh, alpha: float, variance_preserving: bool):
    """A copy of ``teacher`` whose parameters are ((1 − α)·θ_T + α·θ̃)/δ (buffers stay the teacher's)."""
    if not 0.0 <= alpha <= 1.0:
        raise RtlabError(f"student.alpha must be in [0, 1], got {alpha}")
    delta = math.sqrt(alpha ** 2 + (1 - alpha) ** 2) if variance_preserving else 1.0
    return mix_(clone(teacher), 1.0 - alpha, fresh, alpha, delta)


class InterpolatedStudent:
    """θ_S(α) = ((1 − α)·θ_T + α·θ̃)/δ: a student close to (α → 0) or far from (α → 1) its teacher."""

    def __init__(self, opts: InterpolatedOptions) -> None:
        if not 0.0 <= opts.alpha <= 1.0:
            raise RtlabError(f"student.alpha must be in [0, 1], got {opts.alpha}")
        self.opts = opts

    def build(self, run, teacher):
        fresh = run.new_network(self.opts.seed)
        student = interpolate(teacher, fresh, self.opts.alpha, self.opts.variance_preserving)
        if self.opts.alpha > 0:
            warn_if_copy(run, student, teacher, f"student.alpha={self.opts.alpha}, student.seed={self.opts.seed}")
        return _student(student)


@dataclass
class NeighborhoodOptions:
    epsilon: float = 1e-10  # ε ≥ 0: the size of the neighbourhood (0 = copy of the teacher)
    seed: int = 1  # seed of the fresh init θ̃


class NeighborhoodStudent:
    """θ_S = (θ_T + ε·θ̃)/√(1 + ε²): a student in an ε-neighbourhood of its teacher, variance preserved."""

    def __init__(self, opts: NeighborhoodOptions) -> None:
        if not opts.epsilon >= 0.0 or math.isinf(opts.epsilon):
            raise RtlabError(f"student.epsilon must be a finite number >= 0, got {opts.epsilon}")
        self.opts = opts

    def build(self, run, teacher):
        eps = self.opts.epsilon
        fresh = run.new_network(self.opts.seed)
        student = mix_(clone(teacher), 1.0, fresh, eps, math.sqrt(1.0 + eps ** 2))
        if eps > 0:
            warn_if_copy(run, student, teacher, f"student.epsilon={eps}, student.seed={self.opts.seed}")
        return _student(student)


@dataclass
class IndependentOptions:
    seed: int = 1  # seed of the student's own init


class IndependentStudent:
    """The student is an independent fresh initialisation (α = 1)."""

    def __init__(self, opts: IndependentOptions) -> None:
        self.opts = opts

    def build(self, run, teacher):
        student = run.new_network(self.opts.seed)
        warn_if_copy(run, student, teacher, f"student.seed={self.opts.seed} gives the teacher's own init")
        return _student(student)


@dataclass
class CheckpointStudentOptions:
    path: Optional[str] = None  # a checkpoint (runs/X/checkpoints/final) or a run folder (its final checkpoint)
    weights: str = "student"  # which network of the checkpoint: student | teacher
    head: bool = False  # also load the projection head (False: the head is freshly initialised from seed)
    seed: int = 1  # init of whatever is not loaded


class CheckpointStudent:
    """The student starts from the encoder of a checkpoint's student or teacher (any rtlab run)."""

    def __init__(self, opts: CheckpointStudentOptions) -> None:
        if not opts.path:
            raise RtlabError("student=checkpoint needs student.path=CHECKPOINT (e.g. runs/X/checkpoints/final)")
        if opts.weights not in ("student", "teacher"):
            raise RtlabError(f"student.weights must be student or teacher, got '{opts.weights}'")
        self.opts = opts

    def build(self, run, teacher):
        tensors, _ = load_checkpoint(self.opts.path)
        net = run.new_network(self.opts.seed)
        part = net if self.opts.head else net.encoder
        prefix = f"{self.opts.weights}." if self.opts.head else f"{self.opts.weights}.encoder."
        load_network_state(part, tensors, prefix, str(self.opts.path))
        return _student(net)


@hookimpl
def rtlab_register(registry):
    registry.add("student", "copy", CopyStudent, CopyOptions)
    registry.add("student", "interpolated", InterpolatedStudent, InterpolatedOptions)
    registry.add("student", "neighborhood", NeighborhoodStudent, NeighborhoodOptions)
    registry.add("student", "independent", IndependentStudent, IndependentOptions)
    registry.add("student", "checkpoint", CheckpointStudent, CheckpointStudentOptions)
