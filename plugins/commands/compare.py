"""``rtlab compare [OVERRIDES]``: SSL methods × backbones × seeds on one dataset with one budget, then one table.

The configuration is composed like ``rtlab train``'s (``experiment=compare_cpu``, any override) and fixes what the
cells share: data, budget, optimiser, probes. The ``compare`` section says what varies:

* ``compare.methods`` — method names (``method=NAME`` presets, :mod:`plugins.methods`); empty: every registered
  method, those of third-party plugins included;
* ``compare.backbones`` — backbone names; empty: the configuration's backbone;
* ``compare.seeds`` — ``train.seed`` of each cell; it seeds the data order and augmentation, and the teacher's and
  student's init too: a ``teacher.seed``/``student.seed`` the user did not set follows it (``${stream_seed:…}``),
  so every seed has its own random teacher;
* ``compare.metrics`` — the student's metrics in the table, CSV and plot (default ``[knn,linear]``): any metric an
  evaluator declares (``rankme``, a plugin's ``erank``…), accuracies in %, numbers as they are;
* ``compare.overrides`` — extra overrides per method (``{dino: [augment.local_views=2]}``): sizing a method for the
  budget without changing the others (entries of methods not compared are ignored); on the command line:
  ``'+compare.overrides.dino=["augment.local_views=2"]'``;
* ``compare.launcher`` / ``compare.jobs`` — the Hydra launcher of the cells (``basic``: one after another in this
  process; ``joblib``: ``jobs`` worker processes).

Every (method, backbone) pair is one Hydra multirun (``rtlab train -m … train.seed=0,1,2``) into
``OUT/cells/<method>/<backbone>/seed_<seed>``. A cell whose ``summary.json`` exists is finished and is never
trained again, so re-running the command (or adding a method or a seed) trains only what is missing; a cell stopped
with its training state saved (a signal, a kill, a lost node: ``checkpoints/last`` and no ``error.txt``) continues
from it, and a failed cell is trained again from the start — never while a live run holds it. One comparison runs
per ``OUT`` at a time; a signal ends it with exit code 4 after the cell in training saved its state. ``OUT`` is
``runs/<name>/compare-<hash of the shared configuration>`` unless ``--out`` is given.

Results: ``compare.md`` and ``compare.csv`` (per method and backbone: every compared metric of the student, mean ±
sample std over seeds; its value at the random init and the gain over it, paired per seed; wall time; training
images/s; columns ``<number>_mean`` and ``<number>_sd``), each metric as gains over the student's controls (its
own random init — the evaluation before training —, the random-init teacher, the BN control, the input pixels),
paired per seed with a seeded bootstrap 95 % interval (``*``: the interval excludes 0; :func:`framework.api.gain`),
``plots/compare.png`` and ``compare.json`` (every cell). Under the tables, each compared metric's protocol (offline
or online, k, vote, recipe, lr choice, which split fitted the probe, the last epoch), as the cells recorded it
(older cells: as their configuration's evaluators declare it); cells whose protocols differ are refused with a
one-line message unless ``--mixed-protocols`` is given (then each cell's protocol is listed). A failed cell is
reported (the last line of its ``error.txt``; the seeds after it in its multirun are not trained) and the command
exits with code 1 after writing everything else.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from framework.api import (atomic_write_text, control_key, CONTROLS, format_gain, format_key, gain, hookimpl, kind_of,
                           MetricKind, paths, protocols, RtlabError, RunInterrupted, RunLock)

log = logging.getLogger("rtlab")

SECTION = "compare"
CELLS = "cells"
# overrides the grid sets for every cell: the user gives them through compare.* instead
GRID_KEYS = ("method", "backbone", "train.seed")
LAUNCHERS = ("basic", "joblib")
METRICS = ("knn", "linear")  # compare.metrics by default
RUN_NUMBERS = ("wall_time_s", "images_per_s")  # per cell besides the metrics
SEEDED = ("teacher", "student")  # sections whose `seed` follows train.seed per cell unless set (stream_seed)


def numbers(metrics: list[str]) -> tuple[str, ...]:
    """Per cell: every compared metric of the student, its value before training and the gain over it (paired per
    seed), then wall time and training images/s."""
    return (*metrics, *(f"{m}_{x}" for m in metrics for x in ("init", "gain")), *RUN_NUMBERS)


# the student's controls in the gains table: its own random init (the evaluation before training), then the same
# run's teacher, BN control and pixels
GAIN_CONTROLS = ("init", *CONTROLS)


def gain_names(metrics: list[str]) -> tuple[str, ...]:
    """The student's gains over its controls, per cell."""
    return tuple(f"{m}_minus_{c}" for m in metrics for c in GAIN_CONTROLS)


@dataclass
class CompareSettings:
    methods: List[str] = field(default_factory=list)  # [] = every registered method
    # the student's metrics in the table, CSV and plot: any metric an evaluator declares (knn, linear, rankme, …)
    metrics: List[str] = field(default_factory=lambda: list(METRICS))
    backbones: List[str] = field(default_factory=list)  # [] = the configuration's backbone
    seeds: List[int] = field(default_factory=lambda: [0])  # train.seed of the cells
    overrides: Dict[str, List[str]] = field(default_factory=dict)  # method → extra overrides of its cells
    launcher: str = "basic"  # basic (in-process, one cell after another) | joblib (worker processes)
    jobs: int = 1  # parallel cells with the joblib launcher
    out: Optional[str] = None  # the comparison folder; None: runs/<name>/compare-<hash>


@dataclass(frozen=True)
class Cell:
    method: str
    backbone: str
    seed: int

    def folder(self, out: Path) -> Path:
        return out / CELLS / self.method / self.backbone / f"seed_{self.seed}"


# ------------------------------------------------------------------------------------------------------- grid
def grid(cfg: Any, registry: Any) -> tuple[list[str], list[str], list[int]]:
    """(methods, backbones, seeds) of the comparison, checked against the registry."""
    from plugins.methods import GROUP, method_names

    s = cfg[SECTION]
    methods = list(s.methods) or method_names(registry)
    if not methods:
        raise RtlabError("no method is registered; install a method plugin or name methods with compare.methods")
    for m in methods:
        registry.preset(GROUP, m)
    backbones = list(s.backbones) or [str(cfg.backbone.name)]
    seeds = [int(x) for x in s.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise RtlabError(f"compare.seeds must list distinct seeds, got {seeds}")
    if s.launcher not in LAUNCHERS or s.jobs < 1:
        raise RtlabError(f"compare.launcher must be one of {', '.join(LAUNCHERS)} and compare.jobs >= 1, got "
                         f"{s.launcher} and {s.jobs}")
    return methods, backbones, seeds


def shared_hash(cfg: Any) -> str:
    """A short hash of what every cell shares (everything but the ``compare`` section and presentation)."""
    from omegaconf import OmegaConf

    from plugins.analysis import config_hash

    shared = OmegaConf.masked_copy(cfg, [k for k in cfg if k != SECTION])
    return config_hash(shared)


def cell_overrides(user: list[str], method: str, backbone: str, extra: list[str]) -> list[str]:
    """The ``rtlab train`` overrides of a method's cells on a backbone (the seed is swept by the caller); the
    comparison's own ``compare.*`` settings stay out of the cells."""
    shared = [o for o in user if not o.lstrip("+~").startswith(f"{SECTION}.")]
    return [*shared, f"method={method}", *extra, f"backbone={backbone}"]


def seed_streams(cfg: Any, given: list[str]) -> list[str]:
    """``teacher.seed=${stream_seed:teacher}`` (and the student's) where the cell's teacher or student takes a seed
    that is neither set by the user nor already derived from ``train.seed``: every seed of the comparison then has
    its own random teacher and student init, as in the presets (a fixed seed would repeat one teacher)."""
    from omegaconf import OmegaConf

    out = []
    for section in SEEDED:
        node = cfg.get(section)
        set_by_user = any(o.lstrip("+~").startswith(f"{section}.seed=") for o in given)
        if node is not None and "seed" in node and not set_by_user and not OmegaConf.is_interpolation(node, "seed"):
            out.append(f"{section}.seed=${{stream_seed:{section}}}")
    return out


def check_cell(folder: Path, want: Any) -> None:
    """A finished cell must have been trained with the configuration this comparison would give it."""
    from omegaconf import OmegaConf

    saved = paths.config(folder)
    if saved.exists() and shared_hash(OmegaConf.load(saved)) != shared_hash(want):
        raise RtlabError(f"cell {folder} was trained with another configuration; delete it or compare into another "
                         "folder (--out DIR)")


# ---------------------------------------------------------------------------------------------------- running
def interrupted(cell_dir: Path) -> bool:
    """Whether a cell stopped with its training state saved and without an error (a signal, a kill)."""
    return (paths.state(cell_dir).with_suffix(".json").exists() and not paths.error(cell_dir).exists()
            and not paths.summary(cell_dir).exists())


def train_cells(method: str, backbone: str, seeds: list[int], overrides: list[str], out: Path, settings: Any
                ) -> int:
    """One Hydra multirun over ``seeds`` for a (method, backbone) pair; returns the exit code of ``rtlab train``
    (a failing cell stops the seeds after it; they are trained by the next invocation)."""
    from framework.api import train_command

    launcher = [] if settings.launcher == "basic" else [f"hydra/launcher={settings.launcher}",
                                                        f"hydra.launcher.n_jobs={settings.jobs}"]
    argv = ["-m", *overrides, f"train.seed={','.join(map(str, seeds))}",
            f"hydra.sweep.dir={out / CELLS / method / backbone}", "hydra.sweep.subdir=seed_${train.seed}", *launcher]
    print(f"rtlab compare: training {method} on {backbone}, seed(s) {', '.join(map(str, seeds))}", flush=True)
    return train_command(argv)


def run_comparison(overrides: list[str], out: str | None = None, pm: Any = None, mixed_protocols: bool = False
                   ) -> dict:
    """``rtlab compare OVERRIDES``: train the missing cells, then write the table and plot; returns the record.
    ``pm`` resolves names here; the cells are trained by ``rtlab train`` with the process-wide plugin manager.
    Cells whose numbers come from different protocols are refused unless ``mixed_protocols``."""
    from framework.api import check_config, compose, get_plugin_manager, register_configs

    pm = pm or get_plugin_manager()
    register_configs(pm.registry)
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in GRID_KEYS:
            raise RtlabError(f"'{o}': the comparison sets {key} per cell; give compare.methods, compare.backbones "
                             "and compare.seeds instead")
    cfg = compose(overrides, pm.registry)
    check_config(cfg, pm.registry)
    settings = cfg[SECTION]
    methods, backbones, seeds = grid(cfg, pm.registry)
    if not list(settings.metrics) or len(set(settings.metrics)) != len(settings.metrics):
        raise RtlabError(f"compare.metrics must list distinct metric names (compare.metrics=[knn,linear]), got "
                         f"{list(settings.metrics)}")
    folder = Path(out or settings.out or Path("runs") / str(cfg.name) / f"compare-{shared_hash(cfg)}")
    folder.mkdir(parents=True, exist_ok=True)
    # one comparison per folder at a time: a second one would restart the cells the first is training
    guard = RunLock(folder, lambda who: f"comparison folder {folder} is in use by another rtlab compare ({who}); "
                    "wait for it to finish (it trains these cells), or stop it and run this command again").acquire()
    try:
        return _compare_in(folder, cfg, overrides, settings, methods, backbones, seeds, pm, mixed_protocols)
    finally:
        guard.release()


def _compare_in(folder: Path, cfg: Any, overrides: list[str], settings: Any, methods: list[str],
                backbones: list[str], seeds: list[int], pm: Any, mixed_protocols: bool) -> dict:
    """The comparison in ``folder``, which this process holds (see :func:`run_comparison`)."""
    from framework.api import check_config, clear_unfinished, compose, refuse_if_live

    cells = [Cell(m, b, s) for m in methods for b in backbones for s in seeds]
    trained = reused = 0
    refused: dict[Cell, str] = {}
    for m in methods:
        extra = list(settings.overrides.get(m, []))
        for b in backbones:
            want = cell_overrides(overrides, m, b, extra)
            want += seed_streams(compose(want, pm.registry), [*overrides, *extra])
            try:  # a setting a component of this method refuses: its cells fail here, the others are trained
                check_config(compose(want, pm.registry), pm.registry)
            except RtlabError as exc:
                refused.update({Cell(m, b, s): str(exc) for s in seeds})
                continue
            todo = []
            for s in seeds:
                cell_dir = Cell(m, b, s).folder(folder)
                if paths.summary(cell_dir).exists():
                    check_cell(cell_dir, compose([*want, f"train.seed={s}"], pm.registry))
                    reused += 1
                    continue
                in_use = (lambda who, d=cell_dir: f"cell {d} is in use by a live run ({who}); wait for it to finish "
                          "or stop it, then run the comparison again")
                if interrupted(cell_dir):  # stopped with its state saved: the sweep continues it from there
                    refuse_if_live(cell_dir, in_use)
                    log.warning("continuing the interrupted cell %s", cell_dir)
                elif cell_dir.exists():  # what a failed cell left behind: it starts over
                    log.warning("restarting the unfinished cell %s", cell_dir)
                    clear_unfinished(cell_dir, in_use)
                todo.append(s)
            if todo and train_cells(m, b, todo, want, folder, settings) == RunInterrupted.exit_code:
                raise RunInterrupted(f"a signal stopped the comparison in {folder} while it trained {m} on {b}; what "
                                     "the cell saved is kept: run the same command again to go on")
            if todo:  # failures are read from the cells below
                trained += sum(paths.summary(Cell(m, b, s).folder(folder)).exists() for s in todo)
    metrics = [str(m) for m in settings.metrics]
    results = [cell_result(c, c.folder(folder), metrics, refused.get(c), pm.registry) for c in cells]
    notes = protocol_notes(results, metrics, mixed_protocols)
    rows = summarise(results, methods, backbones, metrics)
    record = {"methods": methods, "backbones": backbones, "seeds": seeds, "overrides": overrides,
              "trained": trained, "reused": reused, "cells": results, "rows": rows, "protocols": notes}
    write_results(folder, record)
    print(markdown(rows, notes))
    print(f"rtlab compare: {trained} cell(s) trained, {reused} reused; results in {folder}", flush=True)
    failed = [r for r in results if r["status"] != "done"]
    if failed:
        names = ", ".join(f"{r['method']}/{r['backbone']}/seed {r['seed']}" for r in failed)
        raise CellsFailed(f"{len(failed)} cell(s) did not finish ({names}); compare.json says why (and error.txt "
                          f"in their folders under {folder / CELLS}); the table holds the others")
    return record


class CellsFailed(RtlabError):
    exit_code = 1


# ---------------------------------------------------------------------------------------------------- results
def _eval_at_init(folder: Path) -> dict:
    """The evaluation before training (epoch 0) from the cell's ``metrics.jsonl`` ({} when there was none)."""
    path = paths.metrics(folder)
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "eval" and record.get("epoch") == 0:
            return record
    return {}


def cell_protocols(folder: Path, registry: Any) -> dict[str, Any] | None:
    """How a cell's metrics were measured, by metric name (recorded, or declared by its configuration's evaluators
    for cells from before protocols were recorded); None: unknown."""
    from framework.api import load_run

    try:
        return load_run(folder, registry=registry).metric_protocols
    except RtlabError:
        return None


def protocol_notes(results: list[dict], metrics: list[str], mixed: bool) -> list[str]:
    """One line per compared metric stating its protocol; refused (unless ``mixed``) when cells differ."""
    done = [r for r in results if r["status"] == "done"]
    lines = []
    for metric in metrics:
        by_cell = {f"{r['method']}/{r['backbone']}/seed_{r['seed']}": r["protocols"].get(metric) for r in done
                   if r.get(metric) is not None}
        if not by_cell:
            continue
        clash = protocols.first_difference(by_cell)
        if clash is None:
            lines.append(f"{metric}: {protocols.describe(next(iter(by_cell.values())))}")
            continue
        if not mixed:
            raise RtlabError(f"rtlab compare: the cells' {metric} numbers come from different protocols ({clash}); "
                             "train them alike, or pass --mixed-protocols to tabulate them anyway")
        lines += [f"{metric} of {who}: {protocols.describe(protocol)}" for who, protocol in by_cell.items()]
    return lines


def cell_result(cell: Cell, folder: Path, metrics: list[str], refused: str | None = None, registry: Any = None
                ) -> dict:
    """One cell's numbers (status ``done``), or its failure (``failed``: why its settings were refused, or the last
    line of ``error.txt``)."""
    base = {"method": cell.method, "backbone": cell.backbone, "seed": cell.seed, "folder": str(folder)}
    summary_file = paths.summary(folder)
    if refused is not None:
        return {**base, "status": "failed", "error": refused}
    if not summary_file.exists():
        error = paths.error(folder)
        why = error.read_text().strip().splitlines()[-1] if error.exists() else "not trained"
        return {**base, "status": "failed", "error": why}
    summary = json.loads(summary_file.read_text())
    final, init = summary.get("metrics", {}), _eval_at_init(folder)
    values: dict[str, Any] = {}
    for m in metrics:
        key = format_key(m, "student")
        own, before = final.get(key), init.get(key)
        values.update({m: own, f"{m}_init": before,
                       f"{m}_gain": own - before if own is not None and before is not None else None})
        values[f"{m}_minus_init"] = values[f"{m}_gain"]
        for c in CONTROLS:
            control = final.get(control_key(key, c) or "")
            values[f"{m}_minus_{c}"] = own - control if own is not None and control is not None else None
    declared = cell_protocols(folder, registry)
    measured = {m: None if declared is None else {**protocols.protocol_of(m, declared), "epoch": "last"}
                for m in metrics}
    return {**base, "status": "done", **values, "wall_time_s": summary.get("wall_time_s"),
            "images_per_s": summary.get("images_per_s"), "steps": summary.get("steps"), "protocols": measured,
            "kinds": summary.get("metric_kinds", {}), "errors": [e["error"] for e in summary.get("errors", [])]}


def _stats(values: list) -> tuple[float, float, int] | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def summarise(results: list[dict], methods: list[str], backbones: list[str], metrics: list[str] = METRICS
              ) -> list[dict]:
    """One row per (method, backbone): mean, std and count of every number over the finished seeds."""
    rows = []
    metrics = list(metrics)
    for m in methods:
        for b in backbones:
            done = [r for r in results if r["method"] == m and r["backbone"] == b and r["status"] == "done"]
            failed = sum(r["method"] == m and r["backbone"] == b and r["status"] != "done" for r in results)
            row = {"method": m, "backbone": b, "runs": len(done), "failed": failed}
            for key in numbers(metrics):
                row[key] = _stats([r.get(key) for r in done])
            row["gains"] = {key: gain([r[key] for r in done if r.get(key) is not None]) for key in gain_names(metrics)}
            row["metrics"] = metrics
            row["kinds"] = {k: v for r in done for k, v in r.get("kinds", {}).items()}
            rows.append(row)
    return rows


def _value(stat: tuple | None, kind: MetricKind, std: bool = True) -> str:
    """``81.20 ± 0.40`` for an accuracy (in %), ``37.6 ± 1.2`` for a number; no ± for one seed."""
    if stat is None:
        return "–"
    scale, fmt = (100.0, "{:.2f}") if kind.accuracy else (1.0, "{:.4g}")
    text = fmt.format(scale * stat[0])
    return f"{text} ± {fmt.format(scale * stat[1])}" if std and stat[2] > 1 else text


def _num(stat: tuple | None, digits: int = 0) -> str:
    return "–" if stat is None else f"{stat[0]:.{digits}f}"


def _kinds(rows: list[dict]) -> dict[str, MetricKind]:
    return {name: MetricKind(**kind) for r in rows for name, kind in r.get("kinds", {}).items()}


def _label(metric: str) -> str:
    return {"knn": "k-NN"}.get(metric, metric)


def _title(metric: str, kinds: dict[str, MetricKind]) -> str:
    """The metric's column title: its label, with (%) for an accuracy."""
    return f"{_label(metric)} (%)" if kind_of(metric, kinds).accuracy else _label(metric)


def markdown(rows: list[dict], notes: list[str] = ()) -> str:
    metrics = rows[0].get("metrics", list(METRICS)) if rows else list(METRICS)
    kinds = _kinds(rows)
    heads = [_title(m, kinds) for m in metrics]
    heads += [f"{_title(m, kinds)} at init" for m in metrics]
    heads += [f"{_label(m)} gain" + (" (points)" if kind_of(m, kinds).accuracy else "") for m in metrics]
    lines = ["| method | backbone | seeds | " + " | ".join(heads) + " | wall time (s) | images/s |",
             "|---|---|---|" + "---|" * len(heads) + "---|---|"]
    for r in rows:
        seeds = f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        cells = [_value(r[m], kind_of(m, kinds)) for m in metrics]
        cells += [_value(r[f"{m}_{x}"], kind_of(m, kinds)) for x in ("init", "gain") for m in metrics]
        lines.append(f"| {r['method']} | {r['backbone']} | {seeds} | " + " | ".join(cells) +
                     f" | {_num(r['wall_time_s'], 1)} | {_num(r['images_per_s'])} |")
    gains = gain_names(metrics)
    lines += ["", "Student gains over its controls (points for accuracies, paired per seed): mean [bootstrap 95 % "
              "interval], * the interval excludes 0.", "",
              "| method | backbone | " + " | ".join(f"{_label(m)} − {c}"
                                                  for m in metrics for c in GAIN_CONTROLS) + " |",
              "|---|---|" + "---|" * len(gains)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['backbone']} | "
                     + " | ".join(format_gain(r["gains"][k], kind_of(k.rsplit("_minus_", 1)[0], kinds).accuracy)
                                  for k in gains) + " |")
    if notes:  # how the numbers were measured (at init: the same protocol before training)
        lines += ["", "Protocols:", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    metrics = rows[0].get("metrics", list(METRICS)) if rows else list(METRICS)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # `_sd`: the seeds' sample standard deviation (not `_std`, which names the standardised probe elsewhere)
    writer.writerow(["method", "backbone", "runs", "failed",
                     *(f"{k}_{s}" for k in numbers(metrics) for s in ("mean", "sd")),
                     *(f"{k}_{s}" for k in gain_names(metrics) for s in ("mean", "lo", "hi"))])
    for r in rows:
        cells: list[Any] = [r["method"], r["backbone"], r["runs"], r["failed"]]
        for key in numbers(metrics):
            stat = r[key]
            cells += ["", ""] if stat is None else [f"{stat[0]:.6g}", f"{stat[1]:.6g}" if stat[2] > 1 else ""]
        for key in gain_names(metrics):
            g = r["gains"][key]
            cells += [f"{g[s]:.6g}" if g["n"] and g[s] is not None else "" for s in ("mean", "lo", "hi")]
        writer.writerow(cells)
    return buf.getvalue()


def plot(rows: list[dict], path: Path) -> Path:
    """Every compared metric per method (one bar per backbone, seed std as error bars; the value at init as a mark),
    and training images/s."""
    from plugins.tracking.plotting import pyplot, save

    plt = pyplot()
    metrics, kinds = rows[0].get("metrics", list(METRICS)), _kinds(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    panels = [*metrics, "images_per_s"]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.5 + 0.55 * len(methods) * len(backbones) ** 0.5),
                                                      4))
    width = 0.8 / len(backbones)
    for ax, key in zip(axes, panels):
        accuracy = key != "images_per_s" and kind_of(key, kinds).accuracy
        scale = 100.0 if accuracy else 1.0
        for k, b in enumerate(backbones):
            stats = [next((r[key] for r in rows if r["method"] == m and r["backbone"] == b), None) for m in methods]
            xs = [i + (k - (len(backbones) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [scale * s[0] if s else 0 for s in stats], width, yerr=[scale * s[1] if s else 0 for s in stats],
                   capsize=3, label=b)
            if key in metrics:
                init = [next((r[f"{key}_init"] for r in rows if r["method"] == m and r["backbone"] == b), None)
                        for m in methods]
                ax.scatter(xs, [scale * s[0] if s else float("nan") for s in init], marker="_", s=200, color="k",
                           zorder=3, label="at init" if k == 0 else None)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title("training images/s" if key == "images_per_s" else _title(key, kinds).replace("(%)", "accuracy (%)"))
        ax.set_ylim(bottom=0)  # bars start at 0: their heights compare
        if accuracy:
            ax.set_ylim(0, 100)
    axes[0].legend(fontsize=8)
    return save(fig, path)


def write_results(folder: Path, record: dict) -> None:
    rows = record["rows"]
    atomic_write_text(folder / "compare.json", json.dumps(record, indent=2, default=str))
    atomic_write_text(folder / "compare.md", markdown(rows, record.get("protocols", [])) + "\n")
    atomic_write_text(folder / "compare.csv", csv_text(rows))
    if any(r["runs"] for r in rows):
        plot(rows, folder / "plots" / "compare.png")


# ------------------------------------------------------------------------------------------------------- command
def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every cell: experiment=compare_cpu "
                        "compare.methods=[dino,byol] compare.seeds=[0,1] data.train_size=5000 …")
    parser.add_argument("--out", help="comparison folder (default: runs/NAME/compare-HASH; the same folder reuses "
                        "finished cells)")
    parser.add_argument("--mixed-protocols", action="store_true", help="tabulate cells whose probe protocols "
                        "differ (each cell's protocol is listed under the table) instead of refusing them")


def _run(args: argparse.Namespace) -> int:
    try:
        run_comparison(list(args.overrides), args.out, mixed_protocols=args.mixed_protocols)
    except CellsFailed as exc:
        print(f"rtlab: error: {exc}", file=sys.stderr)
        return 1
    return 0


@hookimpl
def rtlab_register(registry):
    registry.add_settings(SECTION, CompareSettings)


@hookimpl
def rtlab_add_commands(commands):
    commands.add("compare", "SSL methods x backbones x seeds under one budget: a table and a plot (Hydra "
                 "multirun; finished cells are reused)", _configure, _run)
