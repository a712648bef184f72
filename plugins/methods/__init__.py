"""SSL methods under one harness: each method is one module of this package, registered like any plugin.

A **method** is a preset of the config group ``method`` (``rtlab train method=byol``), contributed with
:func:`add_method` (``registry.add_preset("method", …)``): the components it selects — objective, projection head,
teacher updater, student initialiser, augmentation, loss — and the settings its paper fixes. Everything else (the
backbone, the data, the budget, the optimiser and its schedule, the probes) stays the experiment's, so methods are
compared under one harness; an ``experiment`` preset and command-line overrides are applied after the method.

Every method trains a student ``Network`` (encoder + the method's head); its teacher is the run's teacher network:
the frozen random teacher (``random_teacher``), an EMA of the student (``dino``, ``byol``), or, for methods without
a target network (``simsiam``, ``simclr``, ``barlow_twins``, ``vicreg``), the untouched copy the student started
from, which the probes then measure as the random-init baseline of the same architecture. Predictors belong to
their objective (trained with the student, saved with the training state).

``rtlab compare`` (:mod:`plugins.commands.compare`) finds every registered method, so a plugin that calls
:func:`add_method` in its ``rtlab_register`` hook is compared with the built-in ones. docs/methods.md describes
each method, its options and its reference.

Plugins (one method each): ``random_teacher``, ``dino``, ``byol``, ``simsiam``, ``simclr``, ``barlow_twins``,
``vicreg``. Helpers (not plugins): ``prediction`` (the predictor and objective BYOL and SimSiam share) and
``joint_embedding`` (the objective SimCLR, Barlow Twins and VICReg share).
"""

from __future__ import annotations

from typing import Any

GROUP = "method"


def add_method(registry: Any, name: str, choices: dict[str, str], values: dict | None = None, doc: str = ""):
    """Register method ``name``: ``choices`` maps config groups to component names, ``values`` holds settings
    (nested, e.g. ``{"updater": {"bn_mode": "from_data"}}``); ``doc`` is one line with the paper reference."""
    return registry.add_preset(GROUP, name, choices, {**(values or {}), "method": name}, doc)


def method_names(registry: Any) -> list[str]:
    """Every registered method, sorted."""
    return [p.name for p in registry.presets(GROUP)]
