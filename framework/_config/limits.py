"""Values that cannot work, refused before anything is built: non-finite numbers anywhere in the configuration,
sizes that cannot fit in memory, ``RTLAB_*`` variables that do not parse. One line each, naming the setting."""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework._base.errors import RtlabError, log_level
from framework._data.storage import SIZE_VARIABLES, env_bytes
from framework._nets.device import available_ram


def check_finite(node: Any, prefix: str = "") -> None:
    """Every number of the configuration is finite: a NaN or infinite rate, temperature or size would only
    surface later, as a diverged loss or a traceback from deep inside a library."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix.rstrip('.')}[{i}].")
    elif isinstance(node, float) and not math.isfinite(node):
        raise RtlabError(f"{prefix.rstrip('.')} is {node}; give a finite number")


def check_environment() -> None:
    """The ``RTLAB_*`` variables that take values: sizes (``RTLAB_MAX_DEVICE_BYTES``, …) and
    ``RTLAB_LOG_LEVEL``, checked before anything is built."""
    for name in SIZE_VARIABLES:
        env_bytes(name)
    log_level(os.environ.get("RTLAB_LOG_LEVEL", ""))


def check_batch_memory(cfg: DictConfig) -> None:
    """A batch of ``data.image_size`` inputs in float32 must fit in the memory available (the views of a step
    are several such batches): a size typed with a digit too many fails here, not as an allocation error."""
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    batch = OmegaConf.select(cfg, "train.batch_size", default=None)
    if not isinstance(size, int) or not isinstance(batch, int):
        return
    channels = OmegaConf.select(cfg, "data.channels", default=None) or 3
    need, have = 4 * batch * channels * size * size, available_ram()
    if need > have:
        gib = 1 << 30
        raise RtlabError(f"data.image_size={size} makes a batch of {batch} images {need / gib:,.1f} GiB in float32, "
                         f"more than the {have / gib:,.1f} GiB of memory available; lower data.image_size (or "
                         "train.batch_size)")
