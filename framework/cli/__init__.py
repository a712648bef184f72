"""The ``rtlab`` command (``main``) and its run-folder plumbing: folder claims, resuming, sweeps, the cached plugin
listing. ``python -m framework.cli`` runs it (torchrun uses that form). Kept free of torch until a command needs it."""

from framework.cli.main import main

__all__ = ["main"]
