"""rtlab: teacher-student self-distillation studies on any timm backbone and any Hugging Face image dataset.

Plugins, analyses and scripts import what they use from :mod:`framework.api`, the public face (docs/api.md).
This package module stays light (no torch), so ``rtlab --help`` answers at once; it keeps the two names third-party
plugins have always imported from here.

The core is a stack of packages, each importing only those below it (tests/test_layout.py):
``_base`` (torch-free: errors, options, registry, metric kinds and result keys, files) ← ``_nets`` (devices,
processes, networks, checkpoints) ← ``_data`` (decoding, caches, storage, streaming) ← ``_contract`` (hook
specifications, RunView, component protocols, the plugin manager, feature extraction) ← ``_config`` (Hydra
composition and checks) ← ``_run`` (the loop and its collaborators) ← ``cli`` (the ``rtlab`` command and run-folder
plumbing) ← ``api``. Underscored packages are internal: what plugins may use is re-exported by ``framework.api``.
"""

__version__ = "0.1.0"

from framework._base.errors import RtlabError
from framework._base.markers import hookimpl

__all__ = ["RtlabError", "hookimpl", "__version__"]
