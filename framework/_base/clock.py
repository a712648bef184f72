"""The training clock: where a run is, as one value instead of loose counters.

``step`` counts optimiser steps, ``epoch`` completed epochs, ``position`` the batches of the current epoch already
trained. The plan (``steps_per_epoch``, ``epochs``, ``max_steps``) is fixed once the data is known. Everything the loop,
the logs, the schedules and the training state derive from these numbers is derived here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass
class Clock:
    steps_per_epoch: int = 1
    epochs: int = 0
    max_steps: Optional[int] = None
    step: int = 0
    epoch: int = 0  # completed epochs
    position: int = 0  # batches of the current epoch already trained

    @property
    def total_steps(self) -> int:
        """Steps the run will train (``train.max_steps`` included)."""
        total = self.steps_per_epoch * self.epochs
        return total if self.max_steps is None else min(total, self.max_steps)

    @property
    def out_of_steps(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

    @property
    def running(self) -> bool:
        """Whether another step is due: epochs left, and ``max_steps`` not reached (unless an epoch is open)."""
        return self.epoch < self.epochs and not (self.out_of_steps and self.position == 0)

    @property
    def fractional_epoch(self) -> float:
        """Epochs trained, counting the batches of the open epoch as a fraction (0.5: half of epoch 1)."""
        return self.epoch + self.position / max(1, self.steps_per_epoch)

    @property
    def epoch_cut_short(self) -> bool:
        """The open epoch stopped before its last batch (``train.max_steps``)."""
        return self.position < self.steps_per_epoch

    def ends_log_window(self, log_every: int) -> bool:
        """Whether the *next* step ends a logging window: every ``log_every`` steps, an epoch's last step and the
        last step of ``max_steps``."""
        step, position = self.step + 1, self.position + 1
        return (step % log_every == 0 or position == self.steps_per_epoch
                or (self.max_steps is not None and step >= self.max_steps))

    def tick(self) -> None:
        """One optimiser step done."""
        self.step += 1
        self.position += 1

    def end_epoch(self) -> int:
        """The open epoch is over; returns its number (1-based)."""
        self.epoch, self.position = self.epoch + 1, 0
        return self.epoch

    def start_at(self, epoch: int) -> None:
        """Continue as if ``epoch`` epochs had been trained (learning-rate schedules included): IMP's rewinding."""
        self.epoch, self.position, self.step = int(epoch), 0, int(epoch) * self.steps_per_epoch

    def state(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position}

    def load(self, state: Mapping[str, Any]) -> None:
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
