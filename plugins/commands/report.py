"""``rtlab report PATH…``: PNG plots and a Markdown summary of training runs, analyses and Hydra multiruns.

* a training run (a folder with ``metrics.jsonl``): probe accuracy vs. epoch for every target — teacher, its BN
  control, student, input; targets evaluated once (a frozen teacher, the pixels) are dashed horizontal lines
  (docs/paper.md#fig-1) — and the training loss; written to ``RUN/plots/`` and ``RUN/report.md``;
* an analysis folder (``analysis.json``): its own plots and summary, drawn again by the analysis;
* several runs, or a multirun folder (numbered job folders): each run as above, plus one figure per metric with
  the student curve of every run, labelled by the overrides that tell the runs apart, and a table of final and
  best values — in ``--out`` (default: ``comparison/`` beside the runs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.api import (atomic_write_text, from_summary, hookimpl, kind_of, merged, parse_key, parse_point, paths,
                           RtlabError)
from plugins.tracking.plotting import pyplot, save

TARGET_STYLE = {"teacher": ("tab:orange", "-"), "teacher_bn": ("tab:red", ":"), "student": ("tab:blue", "-"),
                "input": ("black", "--")}
CONTROL_BANDS = ("teacher", "teacher_bn", "input")  # drawn as bands behind the compared runs' curves


def read_metrics(folder: Path) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, training rows) of a run's ``metrics.jsonl``; a torn last line is ignored."""
    evals, train = [], []
    path = paths.metrics(folder)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            (evals if row.get("kind") == "eval" else train).append(row)
    return evals, train


def metric_series(evals: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """metric → target → [(epoch, value)] from flat ``metric/target`` keys."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in evals:
        for k, value in row.items():
            key = parse_key(k)
            if key is None or not isinstance(value, (int, float)):
                continue
            out.setdefault(key.metric, {}).setdefault(key.point, []).append((row["epoch"], float(value)))
    return out


def is_run(folder: Path) -> bool:
    return paths.metrics(folder).exists()


def is_analysis(folder: Path) -> bool:
    return (folder / "analysis.json").exists()


def expand(paths: list[str]) -> list[Path]:
    """Run and analysis folders named by ``paths``; a folder of runs (a multirun) stands for its runs."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise RtlabError(f"{p} is not a folder; name run folders (runs/NAME/TIME), analysis folders or a "
                             "multirun folder")
        if is_run(p) or is_analysis(p):
            found.append(p)
            continue
        children = sorted((c for c in p.iterdir() if c.is_dir() and (is_run(c) or is_analysis(c))),
                          key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name))
        if not children:
            raise RtlabError(f"{p} holds no run (no metrics.jsonl) and no analysis (no analysis.json)")
        found.extend(children)
    return found


# ------------------------------------------------------------------------------------------------- progress
@dataclass
class Progress:
    """Where a run stands: ``finished`` (it wrote ``summary.json``), ``in progress`` (a live process holds its
    lock: ``owner``) or ``unfinished`` (stopped by a signal, an error or a lost node; it can be resumed)."""

    status: str
    where: str = ""  # "epoch N of M"
    owner: dict | None = None

    def line(self, folder: Path) -> str | None:
        """What the report says about an unfinished run (None for a finished one)."""
        if self.status == "in progress":
            return f"in progress, {self.where} (PID {self.owner.get('pid', '?')}): these are not final results"
        if self.status == "unfinished":
            return (f"unfinished: stopped in {self.where} without a summary; continue it with 'rtlab train "
                    f"resume={folder}'")
        return None


def progress(folder: Path, rows: list[dict]) -> Progress:
    """The :class:`Progress` of the run in ``folder`` whose ``metrics.jsonl`` rows are ``rows``."""
    import math

    from framework.api import live_owner

    if paths.summary(folder).exists():
        return Progress("finished")
    epochs = [r["epoch"] for r in rows if isinstance(r.get("epoch"), (int, float))]
    total = _planned_epochs(folder)
    where = f"epoch {max(1, math.ceil(max(epochs, default=0)))}" + (f" of {total}" if total else "")
    owner = live_owner(folder)
    return Progress("in progress" if owner is not None else "unfinished", where, owner)


def _planned_epochs(folder: Path) -> int | None:
    """``train.epochs`` of the run's ``config.yaml`` (None under a sample budget, or without the file)."""
    try:
        from omegaconf import OmegaConf

        train = OmegaConf.load(paths.config(folder)).get("train") or {}
        return None if train.get("sample_budget") is not None else int(train.get("epochs"))
    except Exception:  # noqa: BLE001 - a missing or hand-edited config only loses the "of M"
        return None


def check_live(runs: list[Path], force: bool) -> None:
    """Refuse, before anything is written, to report a run that is still training (``--force`` reports it as it
    stands, marked in progress)."""
    if force:
        return
    for folder in runs:
        state = progress(folder, [r for rows in read_metrics(folder) for r in rows])
        if state.status == "in progress":
            raise RtlabError(f"the run in {folder} is in progress ({state.where}, PID {state.owner.get('pid', '?')}); "
                             "its report would not be final: wait for it to finish, or report it as it stands with "
                             "--force")


# ------------------------------------------------------------------------------------------------- one run
def report_run(folder: Path, registry: Any = None) -> str:
    """Fig. 1-style plots of one training run and its Markdown summary (also written to ``report.md``); with a
    ``registry`` and a final checkpoint also the 2-D embedding panel (``plots/embedding.png``)."""
    plt = pyplot()
    evals, train = read_metrics(folder)
    series = metric_series(evals)
    last_epoch = max((row["epoch"] for row in evals), default=0)
    name = folder.name
    summary = _summary(folder)
    kinds = from_summary(summary)
    lines = [f"# Run {summary.get('name', name)} ({folder})", ""]
    status = progress(folder, evals + train).line(folder)
    if status:
        lines += [f"**{status[0].upper()}{status[1:]}.**", ""]
    for metric, targets in series.items():
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        scale = 100.0 if kind_of(metric, kinds).accuracy else 1.0  # accuracies in %, as the tables print them
        drawn: list[tuple[str, list]] = []
        for z, (target, points) in enumerate(targets.items()):
            color, style = TARGET_STYLE.get(parse_point(target)[0], (None, "-"))
            # a series identical to one drawn before would hide it: drawn on top, thinner, and labelled as equal
            same = next((t for t, p in drawn if p == points), None)
            label = target + (f" (= {same})" if same else "")
            lw = 1.0 if same else 1.8
            if len(points) == 1 and last_epoch > 0:
                ax.axhline(scale * points[0][1], color=color, ls=":" if same else "--", lw=lw, zorder=2 + z,
                           label=f"{label} (fixed)")
            else:
                xs, ys = zip(*points)
                ax.plot(xs, [scale * y for y in ys], color=color, ls=":" if same else style, lw=lw, zorder=2 + z,
                        marker="." if len(points) < 30 else None, label=label)
            drawn.append((target, points))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} accuracy (%)" if scale == 100.0 else metric)
        ax.set_title(f"{summary.get('name', name)}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, folder / "plots" / f"{metric}.png")
        lines.append(f"![{metric}](plots/{metric}.png)")
    if train:
        _plot_training(folder, train)
        lines.append("![training](plots/training.png)")
    if registry is not None:
        from plugins.tracking.embedding_panel import embedding_panel

        if embedding_panel(folder, registry):
            lines.append("![embeddings](plots/embedding.png)")
    lines += ["", "| metric | target | first | last | best |", "|---|---|---|---|---|"]
    for metric, targets in series.items():
        for target, points in targets.items():
            values = [v for _, v in points]
            kind = kind_of(metric, kinds)
            best = functools.reduce(kind.better, values)
            lines.append(f"| {metric} | {target} | {kind.format(values[0])} | {kind.format(values[-1])} | "
                         f"{kind.format(best)} |")
    if summary:
        lines += ["", f"{summary.get('epochs')} epochs, {summary.get('steps')} steps, "
                  f"{summary.get('wall_time_s')} s on {summary.get('device')} ({summary.get('precision')})."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(folder / "report.md", text)
    return text


def _plot_training(folder: Path, train: list[dict]) -> None:
    plt = pyplot()
    keys = [k for k in ("train/loss", "train/kl", "train/accuracy") if any(k in r for r in train)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["epoch"], r[key]) for r in train if key in r]
        ax.plot(*zip(*pts), lw=1)
        if key == "train/kl" and all(v > 0 for _, v in pts):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    save(fig, folder / "plots" / "training.png")


def _summary(folder: Path) -> dict[str, Any]:
    try:
        return json.loads(paths.summary(folder).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------------------------- comparison
def run_labels(folders: list[Path]) -> list[str]:
    """Per run, the Hydra overrides that differ between the runs (else its path below the runs' common folder)."""
    overrides = []
    for f in folders:
        path = f / ".hydra" / "overrides.yaml"
        if path.exists():
            from omegaconf import OmegaConf

            overrides.append([str(o) for o in OmegaConf.load(path)])
        else:
            overrides.append([])
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    root = Path(os.path.commonpath([str(f.resolve()) for f in folders])) if folders else Path()
    labels = []
    for f, ovs in zip(folders, overrides):
        own = [o for o in ovs if o not in common]
        labels.append(" ".join(own) if own else os.path.relpath(f.resolve(), root.parent if f.resolve() == root
                                                                 else root))
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({f})" for label, f in zip(labels, folders)]
    return labels


def compare_runs(folders: list[Path], out: Path, target: str = "student") -> str:
    """One figure per metric with the ``target`` curve of every run, and a table of last and best values."""
    plt = pyplot()
    labels = run_labels(folders)
    per_run = [metric_series(read_metrics(f)[0]) for f in folders]
    kinds = merged(_summary(f) for f in folders)
    metrics = sorted({m for s in per_run for m in s})
    lines = [f"# Comparison of {len(folders)} runs", ""]
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        scale = 100.0 if kind_of(metric, kinds).accuracy else 1.0
        for control in CONTROL_BANDS:  # the controls over the runs: a band from the lowest to the highest run
            by_epoch: dict[float, list[float]] = {}
            for series in per_run:
                for epoch, value in series.get(metric, {}).get(control, []):
                    by_epoch.setdefault(epoch, []).append(scale * value)
            if not by_epoch or control == target:
                continue
            epochs = sorted(by_epoch)
            if len(epochs) == 1:  # a frozen control, evaluated once: a band across the plot
                epochs = [0.0, max((e for s in per_run for e, _ in s.get(metric, {}).get(target, [])), default=1.0)]
                by_epoch = {e: next(iter(by_epoch.values())) for e in epochs}
            color = TARGET_STYLE.get(control, (None, "-"))[0]
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                            color=color, alpha=0.18, lw=0)
            ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], color=color, ls="--", lw=1,
                    label=f"{control} (mean, band: range over runs)")  # a band of zero width stays visible
        for label, series in zip(labels, per_run):
            points = series.get(metric, {}).get(target)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, [scale * y for y in ys], label=label, marker="." if len(points) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} accuracy (%, {target})" if scale == 100.0 else f"{metric} ({target})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, out / "plots" / f"compare_{metric}.png")
        lines.append(f"![{metric}](plots/compare_{metric}.png)")
    lines += ["", "| run | folder | " + " | ".join(f"{m} last / best" for m in metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for label, folder, series in zip(labels, folders, per_run):
        cells = []
        for m in metrics:
            values = [v for _, v in series.get(m, {}).get(target, [])]
            kind = kind_of(m, kinds)
            cells.append(f"{kind.format(values[-1])} / {kind.format(functools.reduce(kind.better, values))}"
                         if values else "–")
        lines.append(f"| {label} | {os.path.relpath(folder, out)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    return text


def check_target(runs: list[Path], target: str) -> None:
    """Refuse, before anything is written, a ``--target`` that none of ``runs`` evaluated and no run could."""
    from framework.api import BUILTIN_TARGETS, unknown_name

    if not runs:
        return
    found = {t for f in runs for targets in metric_series(read_metrics(f)[0]).values() for t in targets}
    known = {parse_point(t)[0] for t in found} | found | set(BUILTIN_TARGETS)
    if target not in known:
        raise unknown_name("target", target, known, "(choose with --target NAME)")


# ---------------------------------------------------------------------------------------------------- command
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folders, analysis folders or multirun folders")
    parser.add_argument("--out", help="folder of the comparison of several runs (default: comparison/ beside them)")
    parser.add_argument("--target", default="student", help="the target compared across runs (default: student)")
    parser.add_argument("--force", action="store_true", help="report runs that are still training, as they stand "
                        "(marked in progress)")
    parser.add_argument("--no-embedding", action="store_true",
                        help="skip the PCA / t-SNE panel of the teacher's and student's embeddings (its slowest part)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help=f"CPU threads of torch and of the BLAS / OpenMP pools (default: {THREADS}; more only "
                             "help on an idle machine with many cores)")


THREADS = 1  # the panel's t-SNE and PCA are small: extra threads oversubscribe a busy CPU more than they help


def limited_threads(threads: int | None):
    """A context in which torch and the BLAS / OpenMP pools (threadpoolctl) use ``threads`` threads."""
    import contextlib

    import torch
    from threadpoolctl import threadpool_limits

    n = THREADS if threads is None else threads
    if n < 1:
        raise RtlabError(f"--threads must be a positive number of threads, got {n}")
    stack = contextlib.ExitStack()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    stack.callback(torch.set_num_threads, before)
    stack.enter_context(threadpool_limits(n))
    return stack


def command(args: argparse.Namespace) -> int:
    from framework.api import get_plugin_manager
    from plugins.analysis import render_folder

    folders = expand(args.paths)
    runs = [f for f in folders if is_run(f)]
    check_target(runs, args.target)
    check_live(runs, getattr(args, "force", False))
    with limited_threads(args.threads):
        for f in folders:
            if is_analysis(f):
                render_folder(f, get_plugin_manager().registry)
            else:
                report_run(f, None if args.no_embedding else get_plugin_manager().registry)
            print(f"rtlab report: {f / 'report.md'}")
        if len(runs) > 1:
            out = Path(args.out) if args.out else Path(os.path.commonpath([str(r.resolve()) for r in runs])
                                                       ) / "comparison"
            compare_runs(runs, out, args.target)
            print(f"rtlab report: {out / 'report.md'}")
    return 0


@hookimpl
def rtlab_add_commands(commands):
    commands.add("report", "plots and a Markdown summary of runs, analyses and multiruns", configure, command)
