"""At the end of a run, a table of every target × metric printed to the terminal, and the run's warnings under it
(a degenerate teacher, a collapse, a precision switch: ``summary["warnings"]``), so they are not lost mid-log."""

from __future__ import annotations

from framework.api import ACCURACY, from_summary, hookimpl, kind_of, layer_suffix, MetricKind, parse_key, parse_point

ROW_NAMES = {"teacher": "teacher", "teacher_bn": "teacher (BN control)", "student": "student",
             "input": "input pixels"}


def row_name(point: str) -> str:
    """``teacher_bn`` → "teacher (BN control)"; a layer and a probe dataset follow: ``student.L-2@cifar100`` →
    "student L-2 @ cifar100"."""
    target, layer, dataset = parse_point(point)
    name = ROW_NAMES.get(target, target) + (f" {layer_suffix(layer)[1:]}" if layer != -1 else "")
    return f"{name} @ {dataset}" if dataset is not None else name


def _row_order(point: str) -> tuple:
    """The training data's rows first, then each probe dataset's; in each, the known targets in table order, and
    each target's embedding before its layers."""
    target, layer, dataset = parse_point(point)
    order = list(ROW_NAMES)
    return (dataset or "", order.index(target) if target in order else len(order), target, layer != -1, str(layer))


def format_table(metrics: dict[str, float], kinds: dict[str, MetricKind] | None = None) -> str:
    """``target | metric …`` rows from flat ``metric/target`` keys (accuracies in %, numbers as they are: see
    :class:`framework.api.MetricKind`), the training data's rows first, then each probe dataset's (``metric/target@dataset``).
    """
    kinds = kinds or {}
    cols: list[str] = []
    rows: list[str] = []
    for key in filter(None, map(parse_key, metrics)):
        if key.metric not in cols:
            cols.append(key.metric)
        if key.point not in rows:
            rows.append(key.point)
    if not cols:
        return ""
    rows.sort(key=_row_order)
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
