"""``rtlab verify experiment=NAME [--seeds N]``: train a preset and check the results it expects (a regression test
of numbers).

A preset lists its expected results in a top-level ``expect:`` list (the expectation entries:
``metric``, ``value``, ``tolerance``, optional ``minus`` — another key of the same run, so the expectation is a
paired gain —, ``where`` — the config values of the runs it is about, for a sweep —, and ``budget`` — the config
values it was measured at). ``verify`` trains the preset as ``rtlab train -m`` would (its own sweep, or
``train.seed=0..N-1`` with ``--seeds N``) into a fresh folder, or, when an expectation's ``where`` names
``method``, as ``rtlab compare`` would; then every expectation is the mean of its metric over the matching runs
and passes when it lies within ``tolerance`` of ``value``. An expectation whose ``budget`` the configuration does
not match (``verify experiment=default train.epochs=1``) is skipped, not failed. It prints one line per
expectation and exits 1 naming every failing one (or when none applied).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from framework.api import hookimpl, paths, RtlabError


class VerifyFailed(RtlabError):
    exit_code = 1


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default="<unset>")


def _dotted(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<unset>"
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _runs(out: Path, comparison: bool) -> list[tuple[dict, dict]]:
    """(config values to match ``where`` on, metrics) of every finished run under ``out``."""
    from omegaconf import OmegaConf

    found = []
    if comparison:
        record = json.loads((out / "compare.json").read_text())
        for cell in record["cells"]:
            if cell["status"] == "done":
                summary = json.loads(paths.summary(cell["folder"]).read_text())
                config = OmegaConf.to_container(OmegaConf.load(paths.config(cell["folder"])))
                config.update({"method": cell["method"], "backbone": cell["backbone"]})
                found.append((config, summary.get("metrics", {})))
        return found
    for summary_file in sorted(out.rglob(paths.SUMMARY)):
        config_file = paths.config(summary_file.parent)
        if config_file.exists():
            config = OmegaConf.to_container(OmegaConf.load(config_file))
            found.append((config, json.loads(summary_file.read_text()).get("metrics", {})))
    return found


def check(expectations: list[Any], cfg: Any, runs: list[tuple[dict, dict]]) -> tuple[list[str], list[str], int]:
    """(printed lines, names of the failing expectations, how many applied)."""
    lines, failing, applied = [], [], 0
    for e in expectations:
        name = e.metric + (f" − {e.minus}" if e.minus else "") + "".join(f" [{k}={v}]" for k, v in e.where.items())
        off = [f"{k}={v}" for k, v in e.budget.items() if not _same(_select(cfg, k), v)]
        if off:
            lines.append(f"SKIP {name}: measured at {', '.join(off)}; this configuration differs")
            continue
        applied += 1
        values = []
        for config, metrics in runs:
            if all(_same(_dotted(config, k), v) for k, v in e.where.items()) and e.metric in metrics and (
                    e.minus is None or e.minus in metrics):
                values.append(metrics[e.metric] - (metrics[e.minus] if e.minus else 0.0))
        expected = f"expected {e.value:.4g} ± {e.tolerance:.2g}"
        if not values:
            lines.append(f"FAIL {name}: no finished run has it ({expected})")
            failing.append(name)
            continue
        mean = statistics.fmean(values)
        ok = abs(mean - e.value) <= e.tolerance
        spread = f" ± {statistics.stdev(values):.4g} sd" if len(values) > 1 else ""
        lines.append(f"{'PASS' if ok else 'FAIL'} {name} = {mean:.4g}{spread} over {len(values)} run(s) ({expected})")
        if not ok:
            failing.append(name)
    return lines, failing, applied


def verify(overrides: list[str], seeds: int | None = None, out: str | None = None) -> int:
    from framework.api import check_config, compose, get_plugin_manager, register_configs, train_command

    pm = get_plugin_manager()
    register_configs(pm.registry)
    if seeds is not None and seeds <= 0:
        raise RtlabError(f"--seeds must be positive, got {seeds}")
    if seeds is not None and any(o.startswith("train.seed=") for o in overrides):
        raise RtlabError("give either --seeds N or train.seed=…, not both")
    cfg = compose(overrides, pm.registry)
    check_config(cfg, pm.registry)
    expectations = list(cfg.expect)
    if not expectations:
        raise RtlabError(f"experiment '{cfg.name}' carries no expected results; add an `expect:` list to its preset "
                         "(docs/reproduction.md#rtlab-verify)")
    folder = Path(out or Path("runs") / str(cfg.name) / f"verify_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    seed_args = [f"train.seed={','.join(map(str, range(seeds)))}"] if seeds else []
    comparison = any("method" in e.where for e in expectations)
    if comparison:
        from plugins.commands.compare import CellsFailed, run_comparison

        seed_args = [f"compare.seeds=[{','.join(map(str, range(seeds)))}]"] if seeds else []
        try:
            run_comparison([*overrides, *seed_args], str(folder), pm)
        except CellsFailed as exc:
            print(f"rtlab verify: {exc}", file=sys.stderr)
    else:
        code = train_command(["-m", *overrides, *seed_args, f"hydra.sweep.dir={folder}"])
        if code not in (0, 1):  # 1: a run finished with recorded errors; its numbers are still checked
            raise RtlabError(f"training for verification failed (exit {code}); see the runs under {folder}")
    lines, failing, applied = check(expectations, cfg, _runs(folder, comparison))
    print(f"\nrtlab verify {cfg.name}: {len(expectations)} expectation(s), runs in {folder}")
    for line in lines:
        print(line)
    if failing:
        raise VerifyFailed(f"{len(failing)} expectation(s) failed: {'; '.join(failing)}")
    if not applied:
        raise VerifyFailed("no expectation applies to this configuration (every one was measured at another budget)")
    print(f"rtlab verify: all {applied} applicable expectation(s) passed", flush=True)
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="experiment=NAME and any override (as for rtlab train)")
    parser.add_argument("--seeds", type=int, help="train train.seed=0..N-1 (default: the preset's own sweep/seed)")
    parser.add_argument("--out", help="folder of the verification runs (default: runs/NAME/verify_TIME)")


def _run(args: argparse.Namespace) -> int:
    try:
        return verify(list(args.overrides), args.seeds, args.out)
    except VerifyFailed as exc:
        print(f"rtlab: error: {exc}", file=sys.stderr)
        return 1


@hookimpl
def rtlab_add_commands(commands):
    commands.add("verify", "train a preset and check its expected results (expect: in the preset)", _configure, _run)
