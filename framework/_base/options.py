"""Option dataclasses: the fixed ``train`` and ``eval`` sections of the config, and the base options of component
kinds whose settings share common fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class BackboneOptions:
    """Settings every backbone has; family adapters add their own (``stem``, ``patch_size``, …)."""

    name: str = MISSING  # a timm model name: rtlab backbones PATTERN lists them
    # small-input stem: auto (small-input stem for inputs up to 64 px) | cifar (always) | timm (the family's own
    # stem wherever the input allows it). Each family adapter says what its small-input stem is.
    stem: str = "auto"
    # an init scheme (kind `init`): paper = Kaiming fan-out convs, norm weight 1 / bias 0, no zero-init | timm =
    # the family's default | a plugin's scheme (rtlab plugins lists them)
    init: str = "paper"
    # norm-layer swap (docs/paper.md#fig-11): None keeps the family's own | batchnorm | groupnorm8 | instancenorm |
    # layernorm | identity, for families that take a norm layer (ResNets, the paper's CIFAR nets)
    norm: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model keyword arguments


@dataclass
class DataOptions:
    """Settings every dataset source has; sources add their own (``path``, ``sigma``, …)."""

    train_split: str = "train"
    test_split: str = "test"  # when the dataset has no such split, test_fraction of train is held out
    test_fraction: float = 0.2
    image_column: Optional[str] = None  # None: auto-detect (an Image/array feature, or img/image/pixels/…)
    label_column: Optional[str] = None  # None: auto-detect (a ClassLabel feature, or label/fine_label/…)
    train_size: Optional[int] = None  # stratified deterministic subset of the train split (None: all)
    test_size: Optional[int] = None  # same for the test split
    seed: int = 0  # subset stream
    image_size: Optional[int] = None  # resize (shorter side + centre crop) to this size; None: keep
    channels: Optional[int] = None  # 1 or 3; None: keep the dataset's (grayscale stays 1 channel)
    mean: Optional[List[float]] = None  # per-channel normalisation; None: computed from the train split
    std: Optional[List[float]] = None
    cache: bool = True  # keep the decoded uint8 images on disk, keyed on a file listing / hub revision
    skip_bad_images: bool = False  # leave out image files that cannot be decoded (listed in summary.json)
    # where the decoded images live while training: auto (by size against RTLAB_MAX_DEVICE_BYTES /
    # RTLAB_MAX_HOST_BYTES) | device | host (host memory, batches copied ahead) | disk (read from the cache file) |
    # stream (parquet shards decoded by workers while training, nothing decoded up front)
    storage: str = "auto"
    # rows of the shuffle buffer that orders each epoch (a stream's order; docs/performance.md#streaming): None
    # = a full permutation (stream: 512 MiB of decoded rows, 1,024-16,384); the same value gives every storage the
    # same order
    shuffle_buffer: Optional[int] = None
    workers: Optional[int] = None  # stream: decoding processes; None: min(8, CPUs) on CUDA, 1 on a CPU; 0: in-process


@dataclass
class TrainConfig:
    """The training loop. Defaults are the paper's (docs/paper.md#optimisation)."""

    epochs: int = 100
    # a fixed number of training samples instead of epochs: epochs = max(1, sample_budget // train images), the
    # data-size study's protocol (docs/paper.md#fig-4); None: train.epochs
    sample_budget: Optional[int] = None
    batch_size: int = 256
    seed: int = 0  # data order and augmentation streams
    # auto (bf16 autocast on CUDA and on CPUs with bf16 units, else fp32) | fp32 | bf16 | fp16 | fp64 (networks and
    # inputs in float64: a student at α = 1e-10 then really differs from its teacher, docs/paper.md#alpha-in-float32)
    precision: str = "auto"
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    log_every: int = 50  # optimiser steps between logged (host-synchronised) train metrics
    max_steps: Optional[int] = None  # stop after this many steps (smoke tests, benchmarks)
    drop_last: bool = False  # the paper keeps the last partial batch (196 steps/epoch on CIFAR-10)
    compile: bool = False  # torch.compile the student and teacher
    sync_bn: bool = False  # several processes: BatchNorm with the global batch's statistics (docs/performance.md)
    threads: Optional[int] = None  # CPU threads (torch.set_num_threads); None: torch's default, fewer on a busy CPU
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns and resumes (slower)
    # checkpoints/last, the full training state `rtlab train resume=RUN_DIR` continues from (docs/resume.md):
    state_every: int = 1  # saved every this many epochs (0 = not at epoch ends)
    state_steps: int = 0  # and every this many optimiser steps (0 = off)


@dataclass
class EvalConfig:
    """When and on what the evaluators run."""

    every: int = 1  # epochs between evaluations; 0 = only before and after training
    before: bool = True  # evaluate at epoch 0 (before training)
    batch_size: int = 1024  # feature-extraction batch
    seed: int = 0  # probe stream (linear-probe init and order)
    targets: List[str] = field(default_factory=lambda: ["teacher", "teacher_bn", "student", "input"])
    # representations probed: -1 = the embedding; -2, … or stage names = pooled timm forward_intermediates
    # (targets `student.L-2`, `student.layer3`; docs/experiments.md#probing-intermediate-layers)
    layers: List[Any] = field(default_factory=lambda: [-1])
    # more datasets to probe (transfer probing): a data preset or source name (cifar100, fashion_mnist, …) or a
    # node {preset: NAME, key: KEY, <data option>: …}. Their metrics are `<metric>/<target>@<key>`; the
    # training dataset keeps `<metric>/<target>`. See docs/experiments.md.
    datasets: List[Any] = field(default_factory=list)
    train_data: bool = True  # probe the training dataset too (false: only eval.datasets, e.g. for data subsets)


@dataclass
class AnalysisOptions:
    """Settings every analysis has (``rtlab analyze NAME``); analyses add their own."""

    # Training runs the analysis needs first (e.g. a distilled student): NAME → `rtlab train` overrides. They are
    # trained inside the analysis folder (pretrain/NAME, with an `initial` checkpoint) and named @NAME in specs.
    pretrain: Dict[str, List[str]] = field(default_factory=dict)
