"""``rtlab aggregate DIR… --by KEY``: mean ± std of run results grouped by config values (a sweep's table).

Every run folder under the given folders (a Hydra multirun folder holds one per job) contributes its
``summary.json`` and resolved ``config.yaml``. Runs are grouped by the values of the ``--by`` keys (dotted config
paths such as ``student.alpha`` or ``data.name``); every group gets the mean and sample standard deviation over its
runs (seeds) of each selected metric. ``--best`` uses each run's best evaluation over the epochs (the paper's
max-over-epochs) instead of its final one. Accuracies are printed in %; a group of one run prints the value alone.

Below it, every selected student metric as a gain over its controls (the random-init teacher, the BN control,
the input pixels: :data:`framework.api.CONTROLS`), paired run by run (same seed), with a seeded bootstrap 95 %
interval of the mean gain (10,000 resamples); ``*`` marks a gain whose interval excludes 0.

Below that, how each metric was measured (its protocol: offline or online probe, k, vote, recipe, lr choice, which
split fitted it, last or best epoch; :mod:`framework.api` ``protocols``). Runs pooled in one group must share the
protocol of every metric: a group that mixes them is refused with a one-line message unless ``--mixed-protocols``
(groups may differ: ``--by evaluator.knn.k`` compares protocols on purpose).
"""

from __future__ import annotations

import fnmatch
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

from framework.api import (control_key, CONTROLS, format_gain, gain, hookimpl, kind_of, load_run, merged, metric_of,
                           MetricKind, paths, protocols, RtlabError)


def find_runs(folders: Iterable[str]) -> list[Path]:
    """Run folders (holding ``summary.json`` and ``config.yaml``) at or below ``folders``."""
    runs: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.exists():
            raise RtlabError(f"{root} does not exist; give run or multirun folders")
        runs += sorted(p.parent for p in root.rglob(paths.SUMMARY) if paths.config(p.parent).exists())
    if not runs:
        raise RtlabError(f"no finished runs (summary.json + config.yaml) under {', '.join(map(str, folders))}")
    return runs


def config_value(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RtlabError(f"config key '{key}' is not in the runs' config.yaml; give a dotted path such as "
                             "student.alpha")
        node = node[part]
    return node


def run_protocols(run: Path) -> dict[str, Any] | None:
    """How a run's metrics were measured, by metric name (None: unknown)."""
    try:
        return load_run(run).metric_protocols
    except RtlabError:
        return None


def aggregate(runs: list[Path], by: list[str], patterns: list[str], best: bool = False, mixed: bool = False
              ) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric names, one row per group: the ``by`` values, ``runs``, ``{metric: (mean, std, n)}`` and
    ``{metric name: protocol}``). A group whose runs measured a metric with different protocols is refused
    unless ``mixed``."""
    from omegaconf import OmegaConf

    groups: dict[tuple, list[dict[str, float]]] = {}
    declared: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        config = OmegaConf.to_container(OmegaConf.load(paths.config(run)))
        summary = json.loads(paths.summary(run).read_text())
        values = dict(summary.get("metrics", {}))
        if best:
            values.update(summary.get("best", {}))
        key = tuple(config_value(config, k) for k in by)
        groups.setdefault(key, []).append({k: v for k, v in values.items() if isinstance(v, (int, float))})
        declared.setdefault(key, {})[str(run)] = run_protocols(run)
    names = sorted({m for rows in groups.values() for r in rows for m in r
                    if any(fnmatch.fnmatch(m, p) for p in patterns)})
    table = []
    for key in sorted(groups, key=lambda k: tuple((str(type(v)), v) for v in k)):
        rows = groups[key]
        measured = {}
        for metric in sorted({metric_of(m) for m in names}):
            by_run = {who: None if p is None else {**protocols.protocol_of(metric, p), "epoch": "best" if best
                                                   else "last"}
                      for (who, p), r in zip(declared[key].items(), rows) if any(metric_of(m) == metric for m in r)}
            clash = protocols.first_difference(by_run)
            if clash and not mixed:
                group = ", ".join(f"{k}={v}" for k, v in zip(by, key)) or "all runs"
                raise RtlabError(f"rtlab aggregate: the runs pooled in group {group} measured {metric} with different "
                                 f"protocols ({clash}); group them apart (--by the setting that differs) or pass "
                                 "--mixed-protocols")
            if by_run:
                measured[metric] = "mixed" if clash else next(iter(by_run.values()))
        stats = {}
        for m in names:
            vals = [r[m] for r in rows if m in r and math.isfinite(r[m])]
            if vals:
                stats[m] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
        gains = {}
        for m in names:
            for control in CONTROLS:
                ck = control_key(m, control)
                pairs = [r[m] - r[ck] for r in rows if ck and m in r and ck in r]
                if pairs:
                    gains.setdefault(m, {})[control] = gain(pairs)
        table.append({"by": dict(zip(by, key)), "runs": len(rows), "stats": stats, "gains": gains,
                      "protocols": measured})
    return names, table


def protocol_lines(by: list[str], table: list[dict[str, Any]]) -> list[str]:
    """How each metric was measured: one line per metric, or one per group where the groups differ."""
    lines = []
    for metric in sorted({m for row in table for m in row["protocols"]}):
        per_group = [(row, row["protocols"].get(metric)) for row in table if metric in row["protocols"]]
        if all(p == per_group[0][1] for _, p in per_group):
            lines.append(f"{metric}: {_describe(per_group[0][1])}")
            continue
        for row, p in per_group:
            group = ", ".join(f"{k}={row['by'][k]}" for k in by) or "all runs"
            lines.append(f"{metric} ({group}): {_describe(p)}")
    return lines


def _describe(protocol: Any) -> str:
    return "mixed (--mixed-protocols)" if protocol == "mixed" else protocols.describe(protocol)


def gains_markdown(by: list[str], table: list[dict[str, Any]], kinds: dict[str, MetricKind] | None = None) -> str:
    """One row per group and student metric: its gain over every control (see the module doc)."""
    head = [*by, "metric", *(f"− {c}" for c in CONTROLS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        for m, per in row.get("gains", {}).items():
            accuracy = kind_of(m, kinds or {}).accuracy
            cells = [str(row["by"][k]) for k in by] + [m]
            cells += [format_gain(per[c], accuracy) if c in per else "-" for c in CONTROLS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown(by: list[str], names: list[str], table: list[dict[str, Any]],
             kinds: dict[str, MetricKind] | None = None) -> str:
    def cell(name: str, stat: tuple | None) -> str:
        if stat is None:
            return "-"
        mean, std, n = stat
        if "/" in name and kind_of(name, kinds or {}).accuracy:  # accuracies, in points
            return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")
        return f"{mean:.4g}" + (f" ± {std:.2g}" if n > 1 else "")

    head = [*by, "runs", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [str(row["by"][k]) for k in by] + [str(row["runs"])]
        cells += [cell(m, row["stats"].get(m)) for m in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _configure(parser) -> None:
    parser.add_argument("folders", nargs="+", help="run or multirun folders")
    parser.add_argument("--by", action="append", default=[], help="config key to group by (repeatable)")
    parser.add_argument("--metrics", default="knn/*,linear/*",
                        help="comma-separated glob patterns of metric names (default: knn/*,linear/*)")
    parser.add_argument("--best", action="store_true", help="best evaluation over epochs instead of the final one")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--mixed-protocols", action="store_true", help="pool runs whose probe protocols differ "
                        "instead of refusing them")


def _run(args) -> int:
    runs = find_runs(args.folders)
    patterns = [p.strip() for p in args.metrics.split(",") if p.strip()]
    names, table = aggregate(runs, args.by, patterns, args.best, args.mixed_protocols)
    if not names:
        raise RtlabError(f"no metric matches {args.metrics}; the runs have e.g. "
                         f"{', '.join(list(json.loads((runs[0] / 'summary.json').read_text())['metrics'])[:5])}")
    if args.json:
        print(json.dumps({"by": args.by, "metrics": names, "groups": table}, indent=2, default=str))
    else:
        kinds = merged(json.loads(paths.summary(run).read_text()) for run in runs)
        print(markdown(args.by, names, table, kinds))
        print("\nprotocols:\n" + "\n".join(f"- {line}" for line in protocol_lines(args.by, table)))
        gains = gains_markdown(args.by, table, kinds)
        if gains:
            print("\ngain over each control, paired per seed: mean [bootstrap 95 % interval] (* excludes 0)\n")
            print(gains)
        print(f"{len(runs)} runs", flush=True)
    return 0


@hookimpl
def rtlab_add_commands(commands):
    commands.add("aggregate", "mean ± std of runs' metrics grouped by config values (Hydra sweeps)", _configure,
                 _run)
