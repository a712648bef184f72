"""``RunView``: the members of a run that plugins, components and analyses may use — the whole promise.

Every hook and every component receives the :class:`framework.api.Run` being trained; this protocol lists what of
it is public (docs/plugins.md repeats it as a table, and a test checks that ``Run`` has every member listed here).
Anything else on ``Run`` is internal and may change without notice.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch import nn

    from framework._data.data import ImageData
    from framework._base.metrics import MetricKind
    from framework._nets.models import Network
    import pluggy

    from framework._base.clock import Clock
    from framework._nets.placement import Placement
    from framework._base.registry import Registry


class RunView(Protocol):
    """What a plugin may read (and, where said, change) on a run."""

    # --- what the run is ------------------------------------------------------------------------------------
    cfg: "DictConfig"  # the resolved configuration (read-only by convention)
    out_dir: Path  # the run folder; only rank 0 writes there
    pm: "pluggy.PluginManager"  # the plugin manager (``pm.hook`` calls hooks; framework.api.PluginManager)
    registry: "Registry"  # the component registry
    rank: int  # this process's rank under torchrun (0 otherwise)
    world_size: int  # processes of the run (1 without torchrun)
    is_main: bool  # rank 0: the process that writes files and fires life-cycle hooks
    device: "torch.device"  # where the data, the networks and the features live
    dtype: "torch.dtype"  # the networks' parameter dtype (float32, or float64 for train.precision=fp64)
    amp_dtype: "torch.dtype | None"  # the autocast dtype, None without autocast
    placement: "Placement"  # device, dtypes, memory format and the data's normalisation in one value

    # --- what was built (after setup) ---------------------------------------------------------------------
    data: "ImageData"  # train/test splits as uint8 tensors on ``device`` with labels, channels, size, normalisation
    teacher: "Network"  # the teacher network (``encoder`` + ``head``; ``embed(x)`` = the encoder's embedding)
    student: "Network"  # the student network
    objective: Any  # the objective component (its ``state_dict`` is training state)
    loss_fn: Any  # the loss component, or None for objectives without one
    augment: Any  # the augmentation component
    updater: Any  # the teacher updater component
    evaluators: dict[str, Any]  # the evaluator components by name
    metric_kinds: dict[str, "MetricKind"]  # the evaluators' declared metric kinds by metric name
    optimizer: "torch.optim.Optimizer"  # the optimiser over the student's (and objective's) trainable parameters
    aug_gen: "torch.Generator"  # the augmentation stream (on ``device``)

    # --- where it is ------------------------------------------------------------------------------------------
    clock: "Clock"  # step, epoch, position and the plan in one value (``clock.fractional_epoch``, …); read-only
    step: int  # optimiser steps done
    epoch: int  # epochs completed
    epochs: int  # epochs to train (train.epochs, or from train.sample_budget)
    steps_per_epoch: int
    total_steps: int  # steps the run will train (train.max_steps included)
    resume: bool  # whether the run continues a saved training state
    resumed_step: int | None  # the step a resumed run continued from (None otherwise)
    logging_step: bool  # the current step's metrics will be logged: optional diagnostics may run
    teacher_frozen: bool  # the teacher never changes during training (its probes then run once)

    # --- results ----------------------------------------------------------------------------------------------
    metrics: dict[str, float]  # the latest evaluation's flat results (``knn/student``, …)
    history: list[dict[str, Any]]  # every evaluation's results with its epoch and step
    summary: dict[str, Any]  # what ``summary.json`` will hold; add entries in ``rtlab_summarize``

    # --- helpers ------------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast context (a no-op without autocast)."""

    def prepare(self, images: "torch.Tensor", normalize: Any = None) -> "torch.Tensor":
        """uint8 (or [0, 1]) images → normalised float on ``device`` in the run's dtype and memory format."""

    def new_network(self, seed: int) -> "Network":
        """A freshly initialised backbone + head of the run's architecture, determined by ``seed`` alone."""

    def place(self, net: "nn.Module") -> "nn.Module":
        """``net`` moved to ``device`` in the run's dtype and memory format."""

    def save_checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` (student and teacher, safetensors + JSON, atomically; rank 0)."""

    def record_error(self, where: str, exc: BaseException) -> None:
        """Record a failed optional part in ``summary["errors"]`` and the log; the run goes on."""

    def start_at(self, epoch: int) -> None:
        """Before training: continue as if ``epoch`` epochs were trained (schedules included; IMP's rewinding)."""


# The members above, checked against framework.api.Run by tests/test_runview.py and listed in docs/plugins.md.
PUBLIC = tuple(n for n in RunView.__annotations__) + ("autocast", "prepare", "new_network", "place",
                                                       "save_checkpoint", "record_error", "start_at")
