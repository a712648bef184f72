"""Base option dataclasses for component kinds whose settings share common fields."""

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
    init: str = "paper"  # paper: Kaiming fan-out convs, norm weight 1 / bias 0, no zero-init | timm: family default
    # norm-layer swap (PAPER.md Fig. 11): None keeps the family's own | batchnorm | groupnorm8 | instancenorm |
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
    # where the decoded images live while training: auto (by size against RTLAB_MAX_DEVICE_BYTES /
    # RTLAB_MAX_HOST_BYTES) | device | host (host memory, batches copied ahead) | disk (read from the cache file)
    storage: str = "auto"
