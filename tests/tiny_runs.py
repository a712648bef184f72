"""In-process runs on tiny offline data for tests: a fresh plugin manager, Hydra composition, Run.setup/fit."""

from __future__ import annotations

from pathlib import Path

from framework import hookimpl

# a tiny timm ResNet, a small head, 8x8 digits (a subset), fp32, no trackers
FAST = [
    "backbone=test_resnet",
    "head.hidden_dims=[32]",
    "head.bottleneck_dim=16",
    "head.out_dim=64",
    "data=digits",
    "data.train_size=256",
    "data.test_size=128",
    "train.batch_size=64",
    "train.epochs=1",
    "train.precision=fp32",
    "eval.every=0",
    "eval.before=false",
    "progress.enabled=false",
    "tensorboard.enabled=false",
    "checkpoint.final=false",
]


_pm = None


def plugin_manager():
    """One manager for all tiny runs of a session: storing every timm backbone's config node takes seconds, and
    the built-in components keep no state between runs."""
    global _pm
    if _pm is None:
        from framework._contract.plugin_manager import create_plugin_manager

        _pm = create_plugin_manager(autoload=False)
    return _pm


def compose_run(out: Path, *overrides: str, base=FAST, resume: bool = False):
    """A set-up :class:`framework._run.loop.Run` for ``base`` + ``overrides`` writing to ``out`` (``resume``: restoring
    the training state saved there)."""
    from framework._config.compose import check_config, compose
    from framework._run.loop import Run

    pm = plugin_manager()
    cfg = compose([*base, *overrides], pm.registry)
    check_config(cfg, pm.registry)
    return Run(cfg, out, pm, resume=resume).setup()


def fit(out: Path, *overrides: str, base=FAST) -> dict:
    """Train a tiny run to the end; returns its summary."""
    return compose_run(out, *overrides, base=base).fit()


class Preempted:
    """Stops the process at a step, as a scheduler's pre-emption would."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def rtlab_step_end(self, run, metrics):
        if run.step == self.step:
            raise KeyboardInterrupt


def preempted_then_resumed(out: Path, step: int, *overrides: str, base=FAST):
    """A run pre-empted after optimiser step ``step`` (its training state saved before), then set up again from
    that state: the resumed, not yet trained :class:`framework._run.loop.Run`."""
    import pytest

    first = compose_run(out, *overrides, base=base)
    first.pm.register(Preempted(step), name="preempted")
    try:
        with pytest.raises(KeyboardInterrupt):
            first.fit()
    finally:
        first.pm.unregister(name="preempted")
        first.release()
    return compose_run(out, *overrides, base=base, resume=True)
