"""rtlab core: run loop, hook specifications, component registry, config, data, models, checkpoints, CLI.

The core names no method, dataset or teacher. Everything selectable by name is a component contributed by a
plugin through :func:`framework.hookspecs.rtlab_register`.
"""

__version__ = "0.1.0"

from framework.errors import RtlabError
from framework.hookspecs import hookimpl

__all__ = ["RtlabError", "hookimpl", "__version__"]
