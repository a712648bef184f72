"""Augmentations, batched on the training device. ``identity``: one view, the image itself (the paper's
"None (1 x 32²)")."""

from __future__ import annotations

from dataclasses import dataclass

from framework import hookimpl


@dataclass
class IdentityOptions:
    pass


class Identity:
    """One view per image, unchanged."""

    deterministic = True

    def __init__(self, opts: IdentityOptions) -> None:
        self.opts = opts

    def views(self, images, generator):
        return [images]


@hookimpl
def rtlab_register(registry):
    registry.add("augment", "identity", Identity, IdentityOptions)
