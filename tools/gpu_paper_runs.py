"""The paper's CIFAR-10 presets for as many epochs as fit a time budget, then their results as JSON + Markdown.

Used by ``tools/gpu_check.sh`` (docs/performance.md#the-gpu-check); also runs alone:

    python tools/gpu_paper_runs.py --cifar10 DIR --budget-s 600 --out OUT [--dry-run]

For every preset (default ``paper_cifar10_resnet18`` and ``paper_cifar10_vgg11``): a timing run (60 steps, one
evaluation) measures the seconds per epoch and per evaluation; the preset then runs for the largest number of epochs
(≤ its own 150) whose training and evaluations fit its share of the budget, probing about ten times. The table
compares every probe with the paper's number (Tables 1 and 3 of docs/paper.md). The shared CIFAR-10 copy was made from a
public JPEG version of CIFAR-10: its pixels differ slightly from the PNG original the paper used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("paper_cifar10_resnet18", "paper_cifar10_vgg11")
# docs/paper.md#table-1 (linear) and #table-3 (k-NN), CIFAR10; the input rows are shared by both models
PAPER = {
    "paper_cifar10_resnet18": {"linear/teacher": 35.50, "linear/student": 46.02, "linear/input": 39.02,
                               "knn/teacher": 37.65, "knn/student": 44.67, "knn/input": 33.61},
    "paper_cifar10_vgg11": {"linear/teacher": 36.55, "linear/student": 51.98, "linear/input": 39.02,
                            "knn/teacher": 44.92, "knn/student": 51.32, "knn/input": 33.61},
}
KEYS = [f"{probe}/{target}" for probe in ("knn", "linear") for target in ("teacher", "teacher_bn", "student",
                                                                          "input")]
TIMING_STEPS = 60
MAX_EPOCHS = 150  # the paper's (docs/paper.md#optimisation)
JPEG_NOTE = ("CIFAR-10 from the shared parquet copy, made from a public JPEG version of CIFAR-10: pixels differ "
             "slightly from the PNG original the paper used.")


def rtlab(args: list[str], log: Path, dry_run: bool) -> int:
    cmd = [sys.executable, "-m", "framework.cli", "train", *args]
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if dry_run:
        return 0
    with open(log, "w") as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)


def plan_epochs(epoch_s: float, eval_s: float, budget_s: float, max_epochs: int = MAX_EPOCHS) -> tuple[int, int]:
    """(epochs, eval.every): the most epochs ≤ ``max_epochs`` whose training plus about ten evaluations (and the
    one before training) fit ``budget_s``; at least one epoch."""
    for epochs in range(max_epochs, 0, -1):
        every = max(1, epochs // 10)
        if epochs * epoch_s + (epochs // every + 1) * eval_s <= budget_s:
            return epochs, every
    return 1, 1


def timing(preset: str, common: list[str], out: Path, dry_run: bool) -> tuple[float, float]:
    """Seconds per epoch and per evaluation of ``preset``, from a short run with one evaluation."""
    folder = out / f"{preset}_timing"
    rc = rtlab([f"experiment={preset}", *common, f"train.max_steps={TIMING_STEPS}", "eval.before=true",
                "eval.every=0", "checkpoint.final=false", f"hydra.run.dir={folder}"], out / f"{preset}_timing.log",
               dry_run)
    if dry_run:
        return 10.0, 5.0
    if rc != 0:
        raise SystemExit(f"the timing run of {preset} failed (exit {rc}); see {out / f'{preset}_timing.log'}")
    summary = json.loads((folder / "summary.json").read_text())
    steps_per_epoch = math.ceil(summary["train_images"] / 256)
    epoch_s = summary["train_time_s"] / summary["steps"] * steps_per_epoch
    # the evaluation before training probes every target, the final one too (teacher, BN control, input are
    # computed once): one evaluation of the student costs at most half of the rest
    eval_s = max(0.0, summary["wall_time_s"] - summary["train_time_s"]) / 2
    return epoch_s, eval_s


def table(results: list[dict]) -> str:
    lines = [f"{JPEG_NOTE} Accuracies in %, last evaluation (best over epochs in brackets); paper numbers from "
             "docs/paper.md#tables (Tables 1 and 3).", "",
             "| preset | epochs | steps | wall s | probe | teacher | BN control | student (best) | input | paper "
             "teacher → student (input) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m, best, paper = r.get("metrics", {}), r.get("best", {}), PAPER.get(r["preset"], {})
        for probe in ("knn", "linear"):
            def pct(key):
                return f"{100 * m[key]:.2f}" if key in m else "—"
            student = pct(f"{probe}/student")
            if f"{probe}/student" in best:
                student += f" ({100 * best[f'{probe}/student']:.2f})"
            ref = (f"{paper.get(f'{probe}/teacher', '—')} → {paper.get(f'{probe}/student', '—')} "
                   f"({paper.get(f'{probe}/input', '—')})")
            lines.append(f"| {r['preset']} | {r.get('epochs', '—')} | {r.get('steps', '—')} | "
                         f"{r.get('wall_time_s', '—')} | {probe} | {pct(f'{probe}/teacher')} | "
                         f"{pct(f'{probe}/teacher_bn')} | {student} | {pct(f'{probe}/input')} | {ref} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", required=True, help="folder of CIFAR-10's train/test parquet files")
    parser.add_argument("--budget-s", type=float, default=600.0, help="seconds for all presets together")
    parser.add_argument("--out", type=Path, required=True, help="folder for run folders, logs and the results")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--dry-run", action="store_true", help="print the commands and the plan, run nothing")
    args = parser.parse_args(argv)
    if not (Path(args.cifar10) / "train.parquet").is_file():
        parser.error(f"--cifar10 {args.cifar10} has no train.parquet; point it at the shared CIFAR-10 folder")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"data.path={args.cifar10}", "progress.enabled=false", "tensorboard.enabled=false"]
    share = args.budget_s / len(args.presets)
    results = []
    for preset in args.presets:
        start = time.time()
        epoch_s, eval_s = timing(preset, common, args.out, args.dry_run)
        remaining = share - (time.time() - start)
        epochs, every = plan_epochs(epoch_s, eval_s, remaining)
        print(f"{preset}: {epoch_s:.1f} s/epoch, {eval_s:.1f} s/evaluation -> {epochs} epochs, probes every "
              f"{every} (budget {remaining:.0f} s)", flush=True)
        folder = args.out / preset
        rc = rtlab([f"experiment={preset}", *common, f"train.epochs={epochs}", f"eval.every={every}",
                    f"hydra.run.dir={folder}"], args.out / f"{preset}.log", args.dry_run)
        row = {"preset": preset, "planned_epochs": epochs, "eval_every": every, "epoch_s": round(epoch_s, 2),
               "eval_s": round(eval_s, 2), "exit_code": rc}
        if not args.dry_run and (folder / "summary.json").exists():
            s = json.loads((folder / "summary.json").read_text())
            row.update({k: s.get(k) for k in ("epochs", "steps", "wall_time_s", "train_time_s", "images_per_s",
                                              "precision", "device", "teacher_cache")})
            row["metrics"] = {k: s["metrics"][k] for k in KEYS if k in s.get("metrics", {})}
            row["best"] = {k: v for k, v in s.get("best", {}).items() if k in KEYS}
        row["paper"] = PAPER.get(preset, {})
        results.append(row)
    report = {"note": JPEG_NOTE, "budget_s": args.budget_s, "results": results,
              "environment": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES",)}}
    (args.out / "paper_runs.json").write_text(json.dumps(report, indent=2))
    (args.out / "paper_runs.md").write_text(table(results))
    print(table(results))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
