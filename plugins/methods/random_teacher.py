"""Method ``random_teacher`` — distillation from a frozen random teacher (Sarnthein, Bachmann, Anagnostidis,
Hofmann, "Random Teachers are Good Teachers", ICML 2023; docs/paper.md#protocol).

The paper's setting, component by component (each one rtlab's default, named here so that the method stays the
paper's whatever the defaults become): a randomly initialised teacher (``teacher=random``) that is never updated
and keeps eval-mode BatchNorm (``updater=frozen``), a student initialised at α = 1e-10 from it
(``student=interpolated``), the DINO projection head without weight norm (``head=dino``), the cross-entropy at
τ = 1 between the two outputs of one view (``objective=distillation`` with ``pairing=same``, ``loss=ce``), and no
augmentation (``augment=identity``).
"""

from __future__ import annotations

from framework.api import hookimpl
from plugins.methods import add_method


@hookimpl
def rtlab_register(registry):
    add_method(registry, "random_teacher",
               {"teacher": "random", "student": "interpolated", "updater": "frozen", "objective": "distillation",
                "loss": "ce", "head": "dino", "augment": "identity"},
               {"objective": {"pairing": "same", "center_momentum": None}},
               doc="distillation from a frozen random teacher (Sarnthein et al., ICML 2023)")
