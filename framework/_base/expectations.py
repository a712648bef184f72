"""Expected results a preset carries (its top-level ``expect:`` list), checked by ``rtlab verify``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING


@dataclass
class Expectation:
    """An expected result of a preset, checked by ``rtlab verify`` (docs/reproduction.md#rtlab-verify): the mean of
    ``metric`` (minus ``minus`` in the same run, a paired gain) over the runs whose config matches ``where`` lies
    within ``tolerance`` of ``value``; ``budget`` the config values it was measured at (checked, not set)."""

    metric: str = MISSING
    value: float = MISSING
    tolerance: float = 0.0
    minus: Optional[str] = None
    where: Dict[str, Any] = field(default_factory=dict)
    budget: Dict[str, Any] = field(default_factory=dict)
