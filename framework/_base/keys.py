"""The result-key grammar: the one place that writes and reads the names of evaluation results.

A result is ``<metric>/<target>[<layer>][@<dataset>]``:

* ``metric`` — what an evaluator returned (``knn``, ``linear_std``, ``rankme``);
* ``target`` — what was embedded (``teacher``, ``teacher_bn``, ``student``, ``input``, or a plugin's target);
* ``layer`` — empty for the embedding (layer ``-1``), ``.L<i>`` for an intermediate stage by index (``.L-2``),
  ``.<name>`` for a stage by its name in the backbone's ``feature_info`` (``.layer3``, ``.stages.2``);
* ``dataset`` — empty for the training data, ``@<key>`` for an ``eval.datasets`` entry (``@cifar100``).

Examples: ``knn/student``, ``linear/teacher.L-2@cifar100``, ``knn/student.stages.2``. Keys without a ``/``
(``teacher_student_distance``) are not results of an evaluator. :func:`parse_key` and :meth:`ResultKey.__str__`
are inverses on every key this module writes (tests/test_keys.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

from framework._base.errors import RtlabError

EMBEDDING = -1
_INDEX = re.compile(r"^L(-?\d+)$")

Layer = Union[int, str]


def check_layer(layer: Any) -> Layer:
    """``layer`` if it is a valid layer (an int, or a stage name without ``/``/``@`` that does not read as an
    index), else an :class:`RtlabError` naming the valid forms."""
    ok = isinstance(layer, int) and not isinstance(layer, bool)
    if isinstance(layer, str):
        ok = layer != "" and not any(c in layer for c in "/@") and not _INDEX.match(layer)
    if not ok:
        raise RtlabError(f"eval.layers entries must be ints (-1 = the embedding, -2 = the stage before the last) or "
                         f"stage names without '/' or '@', got {layer!r}")
    return layer


def layer_suffix(layer: Any) -> str:
    """``""`` for the embedding, ``.L-2`` for an index, ``.layer3`` for a stage name."""
    layer = check_layer(layer)
    return "" if layer == EMBEDDING else f".L{layer}" if isinstance(layer, int) else f".{layer}"


@dataclass(frozen=True)
class ResultKey:
    """One parsed result key (see the module doc)."""

    metric: str
    target: str
    layer: Layer = EMBEDDING
    dataset: Optional[str] = None  # None: the training data

    def __post_init__(self) -> None:
        if not self.metric or any(c in self.metric for c in "/@"):  # lr grids name metrics linear_val_lr0.001
            raise RtlabError(f"a result's metric must be a non-empty name without '/' or '@', got {self.metric!r}")
        if not self.target or any(c in self.target for c in "/@."):
            raise RtlabError(f"a result's target must be a non-empty name without '/', '@' or '.', got "
                             f"{self.target!r}")
        check_layer(self.layer)
        if self.dataset is not None and (not self.dataset or any(c in self.dataset for c in "/@")):
            raise RtlabError(f"a probe dataset key must be a non-empty name without '/' or '@', got {self.dataset!r}")

    @property
    def point(self) -> str:
        """What was probed, without the metric: ``student.L-2@cifar100`` (a row of the results table)."""
        return format_point(self.target, self.layer, self.dataset)

    @property
    def stage(self) -> str:
        """The target at its layer, without the dataset: ``student.L-2``."""
        return self.target + layer_suffix(self.layer)

    def with_(self, **changes: Any) -> "ResultKey":
        return replace(self, **changes)

    def __str__(self) -> str:
        return f"{self.metric}/{self.point}"


def format_point(target: str, layer: Layer = EMBEDDING, dataset: Optional[str] = None) -> str:
    """``student.L-2@cifar100``: what was probed, the key without its metric."""
    return target + layer_suffix(layer) + (f"@{dataset}" if dataset is not None else "")


def format_key(metric: str, target: str, layer: Layer = EMBEDDING, dataset: Optional[str] = None) -> str:
    """The key of ``metric`` measured on ``target`` at ``layer`` of ``dataset`` (None: the training data)."""
    return str(ResultKey(metric, target, layer, dataset))


def parse_point(point: str) -> tuple[str, Layer, Optional[str]]:
    """(target, layer, dataset) of ``student.L-2@cifar100``."""
    rest, at, dataset = point.partition("@")
    target, dot, layer_text = rest.partition(".")
    layer: Layer = EMBEDDING
    if dot:
        found = _INDEX.match(layer_text)
        layer = int(found.group(1)) if found else layer_text
    return target, layer, (dataset if at else None)


def parse_key(key: str) -> Optional[ResultKey]:
    """The :class:`ResultKey` of ``key``; None for keys that are not an evaluator's results (no ``/``)."""
    metric, slash, point = str(key).partition("/")
    if not slash:
        return None
    target, layer, dataset = parse_point(point)
    try:
        return ResultKey(metric, target, layer, dataset)
    except RtlabError:
        return None


def metric_of(key: str) -> str:
    """``knn`` from ``knn/student@cifar100`` (the key itself when it has no ``/``)."""
    return str(key).partition("/")[0]
