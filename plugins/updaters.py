"""Teacher updaters. ``frozen``: the teacher never changes (the random-teacher setting, EMA momentum 1)."""

from __future__ import annotations

from dataclasses import dataclass

from framework import hookimpl


@dataclass
class FrozenOptions:
    pass


class FrozenTeacher:
    """No teacher updates."""

    frozen = True

    def __init__(self, opts: FrozenOptions) -> None:
        self.opts = opts

    def update(self, run) -> None:
        pass

    def epoch_end(self, run) -> None:
        pass


@hookimpl
def rtlab_register(registry):
    registry.add("updater", "frozen", FrozenTeacher, FrozenOptions)
