"""At the end of a run, a table of every target × metric printed to the terminal, and the run's warnings under it
(a degenerate teacher, a collapse, a precision switch: ``summary["warnings"]``), so they are not lost mid-log."""

from __future__ import annotations

from framework.api import hookimpl
from framework.api import ACCURACY, from_summary, kind_of, MetricKind

ROW_NAMES = {"teacher": "teacher", "teacher_bn": "teacher (BN control)", "student": "student",
             "input": "input pixels"}


def row_name(target: str) -> str:
    """``teacher_bn`` → "teacher (BN control)"; a probe dataset's ``teacher_bn@cifar100`` → "… @ cifar100"."""
    base, _, dataset = target.partition("@")
    name = ROW_NAMES.get(base, base)
    return f"{name} @ {dataset}" if dataset else name


def format_table(metrics: dict[str, float], kinds: dict[str, MetricKind] | None = None) -> str:
    """``target | metric …`` rows from flat ``metric/target`` keys (accuracies in %, numbers as they are: see
    :class:`framework.api.MetricKind`), the training data's rows first, then each probe dataset's (``metric/target@dataset``).
    """
    kinds = kinds or {}
    cols: list[str] = []
    rows: list[str] = []
    for key in metrics:
        if "/" not in key:
            continue
        metric, target = key.split("/", 1)
        if metric not in cols:
            cols.append(metric)
        if target not in rows:
            rows.append(target)
    if not cols:
        return ""
    order = {t: i for i, t in enumerate(ROW_NAMES)}
    rows.sort(key=lambda t: (t.partition("@")[2], order.get(t.partition("@")[0], len(order))))
    width = max(len(row_name(r)) for r in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{c:>10}" for c in cols)]
    for r in rows:
        lines.append(f"{row_name(r):{width}}  " + "  ".join(
            kind_of(c, kinds).format(metrics.get(f"{c}/{r}"), 10) for c in cols))
    return "\n".join(lines)


def format_warnings(warnings: list) -> str:
    """One ``warning: …`` line per warning of the run (empty when there are none)."""
    return "\n".join(f"warning: {w}" for w in warnings)


@hookimpl
def rtlab_run_end(run, summary):
    kinds = from_summary(summary)
    table = format_table(summary.get("metrics", {}), kinds)
    what = "accuracy" if all(k == ACCURACY for k in kinds.values()) else "results"
    warnings = format_warnings(summary.get("warnings") or [])
    if table:
        print(f"\nrtlab: {run.cfg.name} finished in {summary.get('wall_time_s')} s — {what} on the test split\n"
              f"{table}\nresults: {run.out_dir}")
    if warnings:
        print(warnings)
