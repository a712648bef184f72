"""What the core expects from each kind of component (``factory(options)`` returns one of these).

These protocols are the documentation of the component contract; ``docs/plugins.md`` walks through them.

**State.** A component that changes during training (a centering buffer, an EMA momentum schedule, a
predictor network) implements :class:`Stateful`: its ``state_dict()`` is saved in every training state
(``checkpoints/last``) and handed back to ``load_state_dict`` when the run resumes, so the resumed run
continues exactly. ``nn.Module`` components qualify as they are. Nothing else is needed — no hook, no key
prefixes. Components must not keep state that cannot be rebuilt from their options plus ``state_dict()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from framework._base.metrics import MetricKind
    from framework._contract.features import Features
    from framework._contract.runview import RunView as Run


class Stateful(Protocol):
    """Optional for every kind: state saved with the training state and restored on resume."""

    def state_dict(self) -> Mapping[str, Any]:
        """Tensors, numbers, strings, None and (nested) lists, tuples and dicts; tensors go to safetensors."""

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        """Restore what :meth:`state_dict` returned (tensors arrive on the CPU)."""


class InitScheme(Protocol):
    """Kind ``init`` (chosen with ``backbone.init=NAME``): how a freshly created backbone is initialised."""

    base: str  # the family init the backbone adapter applies first: "paper" (no zero-init residuals) or "timm"

    def apply(self, model: nn.Module) -> None:
        """Re-initialise ``model`` in place (under the run's seed: the global RNG is seeded when this runs)."""


class DatasetSource(Protocol):
    """Kind ``dataset`` (config group ``data``). Options subclass :class:`framework.api.DataOptions`."""

    def load(self) -> Mapping[str, Any]:
        """The dataset's splits as Hugging Face ``datasets.Dataset`` objects, by split name."""


class HeadFactory(Protocol):
    """Kind ``head``: ``factory(options, in_dim=D)`` returns the ``nn.Module`` put on top of the encoder."""


class TeacherInit(Protocol):
    """Kind ``teacher``."""

    def build(self, run: "Run") -> nn.Module:
        """The teacher network (use ``run.new_network(seed)`` for a fresh one); the run moves it to its device."""


class StudentInit(Protocol):
    """Kind ``student``."""

    def build(self, run: "Run", teacher: nn.Module) -> nn.Module:
        """The student network, initialised from (or independently of) ``teacher``; never an alias of it."""


class Updater(Protocol):
    """Kind ``updater``."""

    frozen: bool  # True when the teacher never changes during training (its probes then run once)

    def setup(self, run: "Run") -> None:
        """Optional: once, after teacher and student are built (e.g. put the teacher's BN in train mode)."""

    def update(self, run: "Run") -> None:
        """After every optimiser step."""

    def epoch_end(self, run: "Run") -> None:
        """After every epoch."""


class Objective(Protocol):
    """Kind ``objective``: decides what to run and returns the loss."""

    def setup(self, run: "Run") -> Iterable[nn.Parameter]:
        """Called once before training; returns extra trainable parameters (predictors, …) or nothing."""

    def loss(self, run: "Run", views: list[torch.Tensor], index: torch.Tensor
             ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """The scalar loss for normalised ``views`` of the images ``index`` (train-split positions), and
        detached tensors to log (no host synchronisation here)."""


class Loss(Protocol):
    """Kind ``loss``: a distance between student and teacher outputs of one view pair."""

    def set_epoch(self, epoch: float) -> None:
        """Optional: the fractional epoch before each step, for schedules (e.g. a teacher-temperature warm-up)."""

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, diagnose: bool = True
                 ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """Scalar loss and detached tensors to log. ``diagnose`` is False on steps whose metrics are not logged
        (``run.logging_step``): optional diagnostics may be skipped then. A loss without this parameter is
        called without it (and computes its logs every step)."""


class Augment(Protocol):
    """Kind ``augment``: batched views on the training device."""

    deterministic: bool  # same image → same views every time (enables teacher-output caching)
    # optional: the first ``global_views`` views are the global crops — the ones a teacher sees in DINO-style
    # objectives; None or absent: every view is global
    global_views: int | None

    def views(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """Views of float images in [0, 1], shape (B, C, H, W); the run normalises them afterwards."""


class OptimizerFactory(Protocol):
    """Kind ``optimizer``."""

    def build(self, params: Iterable[nn.Parameter], run: "Run") -> torch.optim.Optimizer:
        """The optimiser over ``params``."""

    def schedule(self, optimizer: torch.optim.Optimizer, run: "Run") -> None:
        """Before every step: set learning rate / weight decay for ``run.step`` (no-op when constant)."""

    def step(self, optimizer: torch.optim.Optimizer, run: "Run") -> Mapping[str, torch.Tensor] | None:
        """Optional: after ``backward``, instead of ``optimizer.step()`` — clip or cancel gradients, then step.
        Returns detached tensors to log (e.g. the gradient norm) or nothing."""


class Evaluator(Protocol):
    """Kind ``evaluator`` (several may be selected: ``evaluator=[knn,linear]``).

    An evaluator that fails is recorded in ``summary.json`` (``errors``) and the run goes on; the command
    then exits with code 1 after every result is written.
    """

    needs_labels: bool  # optional, default True: refused before training on a dataset without labels
    # optional: {metric name: framework.api.MetricKind} for metrics that are not accuracies in [0, 1] (an
    # effective rank, a CKA, a loss): tables print them as numbers and ``best`` follows their direction
    metric_kinds: Mapping[str, "MetricKind"]

    def evaluate(self, features: "Features", run: "Run") -> Mapping[str, float]:
        """Metrics (e.g. ``{"knn": 0.81}``) for one target's train/test embeddings; rtlab appends ``/target``."""
