"""``rtlab analyze imp``: iterative magnitude pruning with rewinding (lottery tickets; docs/paper.md#lottery-tickets).

For every rewind target the algorithm reads as in Frankle et al. (2019): train the dense network from the start
(round 0); then, each round, prune ``fraction`` of the remaining weights globally by magnitude, rewind the
unpruned weights to the rewind point and train again. Targets (``analysis.rewind``), one curve each:

* ``SPEC`` — rewind to the start itself (l = 0): ``student:@distilled`` (a distilled student), ``random``, …;
* ``SPEC@L`` — train from ``SPEC`` and rewind to epoch ``L`` of that dense run: the unpruned weights (encoder and
  classifier) are those of epoch L and training continues from epoch L on the same learning-rate schedule
  (the optimiser state starts fresh, as in open_lth).

Targets with the same start share their dense run. Every round is its own training run (``ROUND/round_NN``,
checkpointed with its masks) and is skipped when already done, so an interrupted analysis resumes at the next
unfinished round. Per round: sparsity, weights remaining, best and last test accuracy of the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch

from framework.api import AnalysisOptions, hookimpl, load_checkpoint, paths, RtlabError
from plugins.analysis.pruning import MASK_SUFFIX, apply_masks, attach_masks, global_magnitude_masks, prunable_names
from plugins.analysis.sources import NetworkSpec, parse_spec, start_overrides
from plugins.tracking.plotting import percent, pyplot, save
from plugins.training.supervised import Supervised, classifier_state

METRIC = "classifier/student"


@dataclass
class ImpOptions(AnalysisOptions):
    rewind: List[str] = field(default_factory=lambda: ["random"])  # rewind targets: SPEC or SPEC@EPOCH, one curve each
    rounds: int = 5  # pruning rounds after the dense run
    fraction: float = 0.2  # of the remaining weights pruned per round
    prune: str = "weights"  # weights: conv + linear weights | all: every parameter (the reference code)


@dataclass(frozen=True)
class RewindTarget:
    start: NetworkSpec
    epoch: int  # 0 = the start itself

    @property
    def label(self) -> str:
        return self.start.name if self.epoch == 0 else f"{self.start.name}, rewind to epoch {self.epoch}"

    @property
    def slug(self) -> str:
        return self.start.slug if self.epoch == 0 else f"{self.start.slug}@{self.epoch}"


def parse_target(text: str) -> RewindTarget:
    head, sep, tail = str(text).rpartition("@")
    if sep and tail.isdigit() and head:
        return RewindTarget(parse_spec(head), int(tail))
    return RewindTarget(parse_spec(text), 0)


def _supervised(run) -> Supervised:
    if not isinstance(run.objective, Supervised):
        raise RtlabError("rtlab analyze imp trains with objective=supervised (use experiment=paper_fig8_imp_cpu "
                         "or set objective=supervised head=identity evaluator=[classifier])")
    return run.objective


class IMP:
    """Iterative magnitude pruning with rewinding: test accuracy vs. weights remaining, per rewind target."""

    def __init__(self, opts: ImpOptions) -> None:
        if opts.rounds < 0:
            raise RtlabError(f"analysis.rounds must be >= 0, got {opts.rounds}")
        if not 0.0 < opts.fraction < 1.0:
            raise RtlabError(f"analysis.fraction must be in (0, 1), got {opts.fraction}")
        if not opts.rewind:
            raise RtlabError("analysis.rewind is empty; name at least one rewind target (e.g. [random])")
        self.opts = opts
        self.targets = [parse_target(t) for t in opts.rewind]
        prunable_names(torch.nn.Linear(1, 1), opts.prune)  # validates the selection early

    def run(self, ctx) -> dict:
        if "classifier" not in ctx.cfg.evaluator:
            raise RtlabError("rtlab analyze imp reads the test accuracy of evaluator=classifier; add it "
                             "(evaluator=[classifier])")
        epochs = int(ctx.cfg.train.epochs)
        for t in self.targets:
            if t.epoch >= epochs:
                raise RtlabError(f"rewind target '{t.label}': epoch {t.epoch} is not before the end of training "
                                 f"(train.epochs={epochs})")
        results = {}
        for target in self.targets:
            results[target.label] = self._line(ctx, target)
        return {"metric": METRIC, "fraction": self.opts.fraction, "prune": self.opts.prune, "lines": results}

    def _dense(self, ctx, start: NetworkSpec) -> tuple[str, dict]:
        """The dense run from ``start`` (round 0), shared by every target of that start."""
        epochs = sorted({t.epoch for t in self.targets if t.start == start and t.epoch > 0})
        folder = f"{start.slug}/dense"
        at = f"checkpoint.epochs=[{','.join(map(str, epochs))}]"
        summary = ctx.train(folder, [*start_overrides(start, ctx.pretrained), at])
        return folder, summary

    def _line(self, ctx, target: RewindTarget) -> list[dict]:
        dense_folder, dense = self._dense(ctx, target.start)
        rows = [self._row(0, 0.0, dense)]
        if target.epoch == 0:
            rewind = start_overrides(target.start, ctx.pretrained)
        else:
            point = paths.checkpoint(ctx.out_dir / dense_folder, f"epoch_{target.epoch}")
            rewind = start_overrides(parse_spec(f"supervised:{point}"), ctx.pretrained)
        previous = paths.final(ctx.out_dir / dense_folder)
        for r in range(1, self.opts.rounds + 1):
            folder = f"{target.slug}/round_{r:02d}"
            summary = ctx.train(folder, [*rewind, "eval.before=false", "checkpoint.every=0", "checkpoint.epochs=[]"],
                                prepare=self._prepare(previous, target.epoch))
            previous = paths.final(ctx.out_dir / folder)
            rows.append(self._row(r, pruned_fraction(previous), summary))
        return rows

    def _prepare(self, previous: Path, rewind_epoch: int):
        """Prune from the previous round's final weights, then attach the masks to the rewound network."""
        def prepare(run) -> None:
            net = _supervised(run).net
            tensors, _ = load_checkpoint(previous)
            state = classifier_state(tensors, str(previous))
            names = prunable_names(net, self.opts.prune)
            missing = [n for n in names if n not in state]
            if missing:
                raise RtlabError(f"{previous} lacks the weight {missing[0]}; it was written by another network")
            masks = {n: state[n + MASK_SUFFIX] for n in names if n + MASK_SUFFIX in state}
            attach_masks(net, global_magnitude_masks({n: state[n] for n in names}, masks, self.opts.fraction))
            if rewind_epoch:
                run.start_at(rewind_epoch)
        return prepare

    @staticmethod
    def _row(r: int, pruned: float, summary: dict) -> dict:
        return {"round": r, "sparsity": pruned, "remaining": 1.0 - pruned,
                "best": summary.get("best", {}).get(METRIC), "last": summary.get("metrics", {}).get(METRIC)}

    def render(self, out_dir: Path, results: dict) -> str:
        return render_imp(out_dir, results)


def render_imp(out_dir: Path, results: dict) -> str:
    """Fig. 8: best test accuracy vs. weights remaining (log x), one curve per rewind target; Markdown table."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = results["lines"]
    for label, rows in lines.items():
        x = [100 * r["remaining"] for r in rows]
        ax.plot(x, [r["best"] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({round(100 * r["remaining"], 1) for rows in lines.values() for r in rows}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("best test accuracy")
    ax.set_title(f"IMP, {100 * results['fraction']:g}% pruned per round ({results['prune']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out_dir / "plots" / "imp.png")
    out = ["# IMP (lottery tickets with rewinding)", "", "![IMP](plots/imp.png)", "",
           "| rewind target | round | weights remaining (%) | best test acc (%) | last test acc (%) |",
           "|---|---|---|---|---|"]
    for label, rows in lines.items():
        for r in rows:
            out.append(f"| {label} | {r['round']} | {100 * r['remaining']:.1f} | {percent(r['best'])} | "
                       f"{percent(r['last'])} |")
    return "\n".join(out) + "\n"


def pruned_fraction(checkpoint: Path) -> float:
    """Fraction of the prunable weights that a round's checkpoint has pruned (every prunable tensor has a mask)."""
    tensors, _ = load_checkpoint(checkpoint)
    masks = [t for k, t in tensors.items() if k.endswith(MASK_SUFFIX) and not k.startswith("teacher.")]
    total = sum(int(m.numel()) for m in masks)
    return sum(int((m == 0).sum()) for m in masks) / total if total else 0.0


@hookimpl
def rtlab_register(registry):
    registry.add("analysis", "imp", IMP, ImpOptions)


@hookimpl
def rtlab_checkpoint_save(run, tensors, meta):
    # pruned weights may have moved in the last optimiser step; the checkpoint must hold them at zero
    apply_masks(run.student)
    if isinstance(getattr(run, "objective", None), Supervised):
        apply_masks(run.objective.classifier)
