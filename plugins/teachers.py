"""Teacher initialisers. ``random``: a frozen network at a fresh random initialisation (PAPER.md §2.1)."""

from __future__ import annotations

from dataclasses import dataclass

from framework import hookimpl
from framework.models import freeze


@dataclass
class RandomTeacherOptions:
    seed: int = 0  # the teacher is determined by this seed alone


class RandomTeacher:
    """A randomly initialised teacher, in eval mode (BatchNorm uses its initial statistics), never trained."""

    frozen = True

    def __init__(self, opts: RandomTeacherOptions) -> None:
        self.opts = opts

    def build(self, run):
        return freeze(run.new_network(self.opts.seed))


@hookimpl
def rtlab_register(registry):
    registry.add("teacher", "random", RandomTeacher, RandomTeacherOptions)
