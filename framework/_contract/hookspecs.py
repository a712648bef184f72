"""The rtlab hook contract.

Every hook is a do-nothing function whose docstring is its documentation; ``docs/hooks.md`` repeats each one and
a test fails when a hook here is missing there. Plugins implement hooks with ``@framework.hookimpl``.

Two kinds of extension go through these hooks:

* **components** — things a config selects by name (a teacher initialiser, a loss, an evaluator, …) are
  contributed once through :func:`rtlab_register`;
* **life-cycle hooks** — broadcast to every plugin while a run goes: trackers, checkpointing, TensorBoard and
  the progress bar are plugins on these hooks, not code in the loop.

Hooks never depend on the order in which plugins were registered. When a plugin's hook raises an unexpected
exception, rtlab reports it as a :class:`framework.api.PluginError` naming the plugin and the hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framework._base.markers import hookspec

if TYPE_CHECKING:
    import torch

    from framework._base.commands import CommandSet
    from framework._base.registry import Registry
    from framework._contract.runview import RunView

# --------------------------------------------------------------------------------------------------------- setup
@hookspec(historic=True)
def rtlab_register(registry: Registry) -> None:
    """Contribute named components to ``registry`` (a :class:`framework.api.Registry`).

    Call ``registry.add(kind, name, factory, options)`` once per component. ``options`` is a dataclass whose
    defaults are the component's defaults; rtlab stores it in Hydra's ConfigStore under the kind's config group,
    so ``teacher=my_teacher teacher.seed=3`` works with no YAML. ``factory(options)`` builds the component when a
    run selects it. New kinds can be declared with ``registry.add_kind``. Historic: plugins registered late are
    still asked.
    """


@hookspec
def rtlab_add_commands(commands: CommandSet) -> None:
    """Contribute ``rtlab <name>`` sub-commands.

    ``commands`` is a :class:`framework.cli.CommandSet`; call
    ``commands.add(name, help, configure, run)`` where ``configure(parser)`` adds argparse arguments and
    ``run(args) -> int | None`` executes the command (its return value is the exit code).
    """


# ---------------------------------------------------------------------------------------------------- a run goes
@hookspec
def rtlab_run_start(run: RunView) -> None:
    """The run is built — data on its device, teacher, student, objective, optimiser — and nothing has trained yet.

    ``run`` is the :class:`framework.api.Run`; the members plugins may use are those of
    :class:`framework.api.RunView` (``run.cfg``, ``run.out_dir``, ``run.data``, ``run.teacher``, ``run.student``,
    …); keep what you need. Use it to open trackers or print the setup.

    A resumed run (``rtlab train resume=…``) calls it again after its state was restored: then
    ``run.resumed_step`` is the step it continues from (None otherwise) and files in ``run.out_dir`` should be
    appended to, not started over.
    """


@hookspec
def rtlab_step_end(run: RunView, metrics: dict[str, float]) -> None:
    """Every ``train.log_every`` optimiser steps (and at each epoch's last step).

    ``metrics`` is a dict of host floats averaged over the steps since the last call: ``train/loss`` plus
    whatever the objective and loss logged (``train/kl``, …), ``train/lr``, ``step`` and ``epoch`` (fractional).
    Only here does the loop synchronise with the device, so keep implementations cheap.
    """


@hookspec
def rtlab_epoch_end(run: RunView, epoch: int) -> None:
    """After epoch ``epoch`` (1-based) finished its last step and before any evaluation of that epoch."""


@hookspec
def rtlab_evaluate_start(run: RunView, epoch: int) -> None:
    """Before the evaluators run at ``epoch`` (0 = before training), e.g. to show that probes are running. Each
    implementation is called even when another one fails; a failure is recorded in ``summary.json``."""


@hookspec
def rtlab_evaluate_end(run: RunView, epoch: int, results: dict[str, float]) -> None:
    """After the evaluators ran at ``epoch`` (0 = before training). Each implementation is called even when
    another one fails; a failure is recorded in ``summary.json`` (``errors``) and training goes on.

    ``results`` is a flat dict ``{"<metric>/<target>": value}``, e.g. ``knn/student`` or ``linear_std/teacher``,
    accuracies as fractions in [0, 1]; probe datasets of ``eval.datasets`` add ``<metric>/<target>@<key>`` (e.g.
    ``linear/student@cifar100``). Frozen targets (teacher, its BN control, the input) are evaluated once and appear
    only in the first results. Every result also holds the parameter distances ``teacher_student_distance`` and
    ``student_distance_from_init`` (keys without ``/``: not accuracies).
    """


@hookspec
def rtlab_checkpoint_save(run: RunView, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """A checkpoint is being written: add tensors (``tensors[key] = tensor``) or JSON-able ``meta`` entries.

    ``meta["kind"]`` is ``"weights"`` (``checkpoints/final``, ``checkpoints/epoch_N``) or ``"train_state"``
    (``checkpoints/last``, the full training state a resumed run continues from). Keys should be prefixed with
    the plugin's name. Checkpoints are safetensors + JSON and never pickled.

    The state of a *component* needs no hook: give it ``state_dict()`` / ``load_state_dict(state)`` and it is
    saved and restored automatically (:mod:`framework._run.state`).
    """


@hookspec
def rtlab_checkpoint_load(run: RunView, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """A training state was restored into ``run`` (a resumed run, before ``rtlab_run_start``): restore what your
    :func:`rtlab_checkpoint_save` added to it. ``run.step`` is the step the run continues from."""


@hookspec
def rtlab_summarize(run: RunView, summary: dict[str, Any]) -> None:
    """Training and the final evaluation are done: add entries to ``summary`` before ``summary.json`` is written.

    ``summary["metrics"]`` holds the final flat metrics (``knn/student``, ``linear/teacher``, …). Each
    implementation is called even when another one fails (its error is recorded in ``summary["errors"]``), and
    ``summary.json`` is written either way: a failing analysis never costs the training results.
    """


@hookspec
def rtlab_run_end(run: RunView, summary: dict[str, Any]) -> None:
    """``summary.json`` was written. Close trackers, print tables, write plots. Each implementation is called
    even when another one fails; failures are added to ``summary.json`` and the command exits with code 1."""


@hookspec
def rtlab_run_error(run: RunView, error: BaseException) -> None:
    """The run stopped with ``error`` (an exception). Finished work on disk must stay intact; flush and close.

    Every implementation is called even when another one fails.
    """
