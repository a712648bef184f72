"""What an evaluator's numbers are: accuracies (fractions in [0, 1], shown as %) or plain numbers with a direction.

An evaluator declares the kind of each metric it returns in an optional ``metric_kinds`` attribute::

    class RankMe:
        metric_kinds = {"rankme": MetricKind.number(higher_is_better=True)}

Metrics it does not declare are accuracies. A run collects the declarations of its evaluators
(``run.metric_kinds``) and records them in ``summary.json`` (``metric_kinds``), so tables, ``best`` (the max of
an accuracy, the min of a lower-is-better number) and ``rtlab report`` / ``aggregate`` / ``compare`` read them
back for finished runs too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from framework._base.errors import RtlabError
from framework._base.keys import metric_of


@dataclass(frozen=True)
class MetricKind:
    """``accuracy``: a fraction in [0, 1] shown as a percentage; otherwise a plain number. ``higher_is_better``
    picks what ``best`` keeps over the evaluations of a run."""

    accuracy: bool = True
    higher_is_better: bool = True

    @classmethod
    def number(cls, higher_is_better: bool = True) -> "MetricKind":
        return cls(accuracy=False, higher_is_better=higher_is_better)

    def format(self, value: float | None, width: int = 0) -> str:
        """``81.23%`` for an accuracy, ``37.6`` (4 significant digits) for a number, ``-`` for none."""
        if value is None:
            text = "-"
        elif self.accuracy:
            text = f"{100 * value:.2f}%"
        else:
            text = f"{value:.4g}"
        return f"{text:>{width}}"

    def better(self, a: float, b: float) -> float:
        return max(a, b) if self.higher_is_better else min(a, b)


ACCURACY = MetricKind()


def declared_kinds(evaluators: Mapping[str, Any]) -> dict[str, MetricKind]:
    """The ``metric_kinds`` every evaluator declares, by metric name (one name cannot have two kinds)."""
    kinds: dict[str, MetricKind] = {}
    for ename, evaluator in evaluators.items():
        for name, kind in (getattr(evaluator, "metric_kinds", None) or {}).items():
            if not isinstance(kind, MetricKind):
                raise RtlabError(f"evaluator '{ename}' declares metric '{name}' as {kind!r}; metric_kinds values "
                                 "must be framework.api.MetricKind (MetricKind() or MetricKind.number(...))")
            if kinds.get(name, kind) != kind:
                raise RtlabError(f"metric '{name}' is declared with two kinds ({kinds[name]} and {kind}); give one "
                                 "of the evaluators' metrics another name")
            kinds[name] = kind
    return kinds


def to_json(kinds: Mapping[str, MetricKind]) -> dict[str, dict[str, bool]]:
    return {name: asdict(kind) for name, kind in kinds.items()}


def from_summary(summary: Mapping[str, Any] | None) -> dict[str, MetricKind]:
    """The kinds a run recorded in its ``summary.json`` (runs written before kinds existed: all accuracies)."""
    saved = (summary or {}).get("metric_kinds") or {}
    return {name: MetricKind(**value) for name, value in saved.items()}


def kind_of(key: str, kinds: Mapping[str, MetricKind]) -> MetricKind:
    """The kind of a flat result key (``knn/student``): declared, else an accuracy."""
    return kinds.get(metric_of(key), ACCURACY)


def merged(summaries: Iterable[Mapping[str, Any] | None]) -> dict[str, MetricKind]:
    """The kinds recorded by several runs (a table over runs)."""
    kinds: dict[str, MetricKind] = {}
    for summary in summaries:
        kinds.update(from_summary(summary))
    return kinds
