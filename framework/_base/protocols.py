"""A protocol on every number: how each evaluator metric was measured, recorded beside the value.

An evaluator declares, per metric name, the protocol that produced it in an optional ``metric_protocols``
attribute — a flat mapping of JSON values, e.g. for the k-NN probe::

    {"knn": {"probe": "offline", "classifier": "k-NN", "k": 20, "distance": "l2", "vote": "majority",
             "fit": "train split"}}

Conventional fields: ``probe`` (``offline``: fitted on frozen embeddings at an evaluation; ``online``: trained
alongside training on the training batches), ``classifier``, ``fit`` (which split trained the probe), then the
recipe (``k``, ``vote``, ``temperature``; ``optimizer``, ``lr``, ``lr_choice``, ``epochs``, …). A run records the
declarations in ``summary.json`` (``metric_protocols``, by metric name; ``protocols``, by result key with the epoch
— ``last`` for ``metrics``, ``best`` for ``best``) and with every evaluation in ``metrics.jsonl``. ``rtlab compare``
and ``rtlab aggregate`` print them under their tables and refuse to pool numbers whose protocols differ.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from framework._base.errors import RtlabError
from framework._base.keys import metric_of

UNDECLARED = {"probe": "undeclared"}  # an evaluator that declares nothing
_SCALARS = (str, int, float, bool, type(None))


def _check(ename: str, name: str, protocol: Any) -> dict[str, Any]:
    ok = isinstance(protocol, Mapping) and all(
        isinstance(k, str) and (isinstance(v, _SCALARS) or (isinstance(v, (list, tuple))
                                                            and all(isinstance(x, _SCALARS) for x in v)))
        for k, v in protocol.items())
    if not ok:
        raise RtlabError(f"evaluator '{ename}' declares the protocol of metric '{name}' as {protocol!r}; "
                         "metric_protocols values must be flat dicts of strings, numbers and lists of them")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in protocol.items()}


def declared_protocols(evaluators: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``metric_protocols`` every evaluator declares, by metric name (one name cannot have two)."""
    protocols: dict[str, dict[str, Any]] = {}
    for ename, evaluator in evaluators.items():
        for name, protocol in (getattr(evaluator, "metric_protocols", None) or {}).items():
            protocol = _check(ename, name, protocol)
            if protocols.get(name, protocol) != protocol:
                raise RtlabError(f"metric '{name}' is declared with two protocols; give one of the evaluators' "
                                 "metrics another name")
            protocols[name] = protocol
    return protocols


def protocol_of(key: str, protocols: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The protocol of a flat result key (``knn/student@cifar100``): declared for its metric, else undeclared."""
    return dict(protocols.get(metric_of(key), UNDECLARED))


def keyed(values: Iterable[str], protocols: Mapping[str, Mapping[str, Any]], epoch: str) -> dict[str, dict]:
    """``{key: protocol + {"epoch": epoch}}`` for the evaluator results among ``values`` (keys with a ``/``)."""
    return {k: {**protocol_of(k, protocols), "epoch": epoch} for k in values if "/" in k}


def from_summary(summary: Optional[Mapping[str, Any]]) -> Optional[dict[str, dict[str, Any]]]:
    """The protocols a run recorded by metric name; None for runs written before protocols were recorded."""
    saved = (summary or {}).get("metric_protocols")
    return None if saved is None else {name: dict(p) for name, p in saved.items()}


def describe(protocol: Optional[Mapping[str, Any]]) -> str:
    """One line: ``offline k-NN: k 20, distance l2, vote majority; fit on the train split``."""
    if protocol is None:
        return "not recorded (a run older than protocol records)"
    p = dict(protocol)
    head = " ".join(str(p.pop(k)) for k in ("probe", "classifier") if k in p)
    fit = p.pop("fit", None)
    epoch = p.pop("epoch", None)
    parts = [f"{k.replace('_', ' ')} {_value(v)}" for k, v in p.items()]
    text = head + (": " + ", ".join(parts) if parts else "")
    if fit:
        text += f"; fit on the {fit}"
    if epoch:
        text += f"; {epoch} epoch" if epoch in ("last", "best") else f"; epoch {epoch}"
    return text


def _value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def first_difference(protocols: Mapping[str, Optional[Mapping[str, Any]]]) -> Optional[str]:
    """For ``{who: protocol}`` (who: a run or a cell), None when all agree, else a clause naming two that differ
    and how: ``k 20 in dino/seed_0 vs k 200 in byol/seed_0``."""
    items = list(protocols.items())
    if not items:
        return None
    first_who, first = items[0]
    for who, other in items[1:]:
        if other == first:
            continue
        if first is None or other is None:
            return f"{describe(first)} in {first_who} vs {describe(other)} in {who}"
        fields = [k for k in dict.fromkeys([*first, *other]) if first.get(k) != other.get(k)]
        shown = ", ".join(f"{k} {_value(first.get(k, '-'))}" for k in fields[:2])
        other_shown = ", ".join(f"{k} {_value(other.get(k, '-'))}" for k in fields[:2])
        return f"{shown} in {first_who} vs {other_shown} in {who}"
    return None
