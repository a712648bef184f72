"""Checkpoints of the run (safetensors + JSON, atomic): every ``checkpoint.every`` epochs and at the end.

``checkpoints/final`` holds the final student and teacher; ``checkpoints/epoch_N`` the periodic ones and those
listed in ``checkpoint.epochs`` (e.g. the rewind points of lottery-ticket analyses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from framework import hookimpl


@dataclass
class CheckpointSettings:
    every: int = 0  # epochs between periodic checkpoints (0 = none)
    final: bool = True  # write checkpoints/final at the end of training
    epochs: List[int] = field(default_factory=list)  # also write checkpoints/epoch_N after these epochs


@hookimpl
def rtlab_register(registry):
    registry.add_settings("checkpoint", CheckpointSettings)


@hookimpl
def rtlab_epoch_end(run, epoch):
    every = run.cfg.checkpoint.every
    if (every and epoch % every == 0) or epoch in run.cfg.checkpoint.epochs:
        run.save_checkpoint(f"epoch_{epoch}")


@hookimpl
def rtlab_summarize(run, summary):
    if run.cfg.checkpoint.final:
        path = run.save_checkpoint("final")
        summary["checkpoint"] = str(path.relative_to(run.out_dir).with_suffix(""))
