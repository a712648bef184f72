"""Tiny supervised settings and helpers shared by the analysis tests."""

from __future__ import annotations

from pathlib import Path

from framework import hookimpl

# The CPU supervised preset on 400 digits (8x8, CIFAR stem) for 2 epochs (~70 % test accuracy): a second or two
# per run. No augmentation: with so few steps the BN statistics must see the test distribution.
SUP = [
    "experiment=supervised_fashion_mnist_cpu",
    "data=digits",
    "data.train_size=400",
    "data.test_size=200",
    "backbone.stem=auto",
    "train.epochs=2",
    "train.batch_size=32",
    "augment.flip=0",
    "augment.pad=0",
    "optimizer.lr=0.02",
    "optimizer.milestones=[]",
    "tensorboard.enabled=false",
    # fp32: on CPUs with bf16 units precision=auto trains in bf16, which reaches 45 % instead of 72 % in these 26
    # steps (measured on this machine's CPU); the tests need the fp32 numbers wherever they run
    "train.precision=fp32",
]

# A tiny random-teacher distillation of the same backbone (a pretrain run of the analyses).
DISTILL = [
    "experiment=distill_fashion_mnist_cpu",
    "data=digits",
    "data.train_size=400",
    "data.test_size=200",
    "backbone.stem=auto",
    "head.hidden_dims=[64]",
    "head.bottleneck_dim=32",
    "head.out_dim=128",
    "train.epochs=1",
    "train.batch_size=64",
    "eval.every=0",
    "tensorboard.enabled=false",
]


def quoted(overrides: list[str]) -> str:
    """A Hydra list value of override strings, e.g. for analysis.pretrain.NAME."""
    return "[" + ",".join(f"'{o}'" for o in overrides) + "]"


class RunRecorder:
    """A plugin that records the folder of every run that starts (which runs an analysis really trained)."""

    def __init__(self) -> None:
        self.started: list[Path] = []

    @hookimpl
    def rtlab_run_start(self, run):
        self.started.append(Path(run.out_dir))
