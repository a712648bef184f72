"""``rtlab analyze barrier``: linear mode connectivity of supervised runs from a common start (docs/paper.md#fig-9).

For every start (``analysis.starts``, network specifications such as ``student:@distilled`` or ``random``),
``analysis.runs`` supervised runs are trained that differ only in ``train.seed`` — the order of the data and the
augmentation draws, i.e. the SGD noise; the start, the classifier's init and every other setting are the same.
For every pair of final networks (i, j) the network (1 − γ)·θᵢ + γ·θⱼ is evaluated at ``analysis.points``
values of γ in [0, 1]: test error and loss (and the train split's with ``splits=[test,train]``). The barrier of a
pair is max_γ error(γ) − ((1 − γ)·error(0) + γ·error(1)); the analysis reports its mean ± std over pairs, for
every start, side by side. Batch-norm statistics of every point are re-estimated on the training images
(``bn=reestimate``, the default) or interpolated (``bn=interpolate``). Trained runs and finished curves are kept
and skipped when the analysis is run again.
"""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch

from framework.api import AnalysisOptions, atomic_write_text, hookimpl, load_checkpoint, paths, RtlabError
from plugins.analysis.interpolation import barrier, check_bn_mode, classifier_metrics, combine, load_point
from plugins.analysis.sources import parse_spec, start_overrides
from plugins.tracking.plotting import percent, pyplot, save
from plugins.training.supervised import Supervised, classifier_state

SPLITS = ("test", "train")


@dataclass
class BarrierOptions(AnalysisOptions):
    starts: List[str] = field(default_factory=lambda: ["random"])  # network specs; one panel and table row each
    runs: int = 3  # supervised runs per start (train.seed = seed, seed + 1, …)
    points: int = 50  # values of γ in [0, 1]
    bn: str = "reestimate"  # reestimate: BN statistics recomputed on the train images at every γ | interpolate
    splits: List[str] = field(default_factory=lambda: ["test"])  # test and/or train


class Barrier:
    """Linear-mode-connectivity barriers between supervised runs that differ only in their SGD noise."""

    def __init__(self, opts: BarrierOptions) -> None:
        if opts.runs < 2:
            raise RtlabError(f"analysis.runs must be at least 2 (pairs of runs are interpolated), got {opts.runs}")
        if opts.points < 2:
            raise RtlabError(f"analysis.points must be at least 2, got {opts.points}")
        bad = [s for s in opts.splits if s not in SPLITS]
        if bad or not opts.splits:
            raise RtlabError(f"analysis.splits must name test and/or train, got {list(opts.splits)}")
        check_bn_mode(opts.bn)
        self.opts = opts
        self.starts = [parse_spec(s) for s in opts.starts]
        labels = [s.name for s in self.starts]
        if len(set(labels)) != len(labels):
            raise RtlabError(f"analysis.starts has repeated labels {labels}; give them names (LABEL=SPEC)")

    def run(self, ctx) -> dict:
        gammas = [i / (self.opts.points - 1) for i in range(self.opts.points)]
        seed = int(ctx.cfg.train.seed)
        finals: dict[str, list[Path]] = {}
        for start in self.starts:  # train everything first: the evaluation run below holds memory
            overrides = start_overrides(start, ctx.pretrained)
            finals[start.name] = []
            for k in range(self.opts.runs):
                folder = f"{start.slug}/run_{k}"
                ctx.train(folder, [*overrides, f"train.seed={seed + k}"])
                finals[start.name].append(paths.final(ctx.out_dir / folder))
        run = ctx.evaluation_run()
        if not isinstance(run.objective, Supervised):
            raise RtlabError("rtlab analyze barrier needs objective=supervised (use experiment=paper_fig9_lmc_cpu)")
        net = run.objective.net
        results = {}
        for start in self.starts:
            states = [classifier_state(load_checkpoint(p)[0], str(p)) for p in finals[start.name]]
            pairs = []
            for i, j in itertools.combinations(range(len(states)), 2):
                cache = ctx.out_dir / start.slug / f"curve_{i}_{j}.json"
                if cache.exists():
                    pairs.append(json.loads(cache.read_text()))
                    continue
                curve = self._curve(net, run, states[i], states[j], gammas)
                curve.update(i=i, j=j)
                atomic_write_text(cache, json.dumps(curve))
                pairs.append(curve)
            results[start.name] = summarize(pairs, self.opts.splits)
        return {"gammas": gammas, "bn": self.opts.bn, "runs": self.opts.runs, "starts": results}

    def _curve(self, net, run, a, b, gammas) -> dict:
        curve: dict = {f"{split}_{m}": [] for split in self.opts.splits for m in ("error", "loss")}
        for g in gammas:
            load_point(net, combine([a, b], [1.0 - g, g]), self.opts.bn, run)
            for split in self.opts.splits:
                data = getattr(run.data, split)
                m = classifier_metrics(net, data.images, data.labels, run)
                curve[f"{split}_error"].append(m["error"])
                curve[f"{split}_loss"].append(m["loss"])
        for split in self.opts.splits:
            curve[f"{split}_error_barrier"] = barrier(curve[f"{split}_error"], gammas)
            curve[f"{split}_loss_barrier"] = barrier(curve[f"{split}_loss"], gammas)
        return curve

    def render(self, out_dir: Path, results: dict) -> str:
        return render_barrier(out_dir, results)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(pairs: list[dict], splits) -> dict:
    out: dict = {"pairs": pairs}
    for split in splits:
        for m in ("error", "loss"):
            mean, std = _mean_std([p[f"{split}_{m}_barrier"] for p in pairs])
            out[f"{split}_{m}_barrier_mean"], out[f"{split}_{m}_barrier_std"] = mean, std
        ends = [p[f"{split}_error"][k] for p in pairs for k in (0, -1)]
        out[f"{split}_endpoint_error_mean"] = statistics.fmean(ends)
    return out


def render_barrier(out_dir: Path, results: dict) -> str:
    """Fig. 9: error along the paths (thin: pairs, dashed: mean), one panel per start; Markdown table."""
    plt = pyplot()
    gammas = results["gammas"]
    starts = results["starts"]
    splits = [k[:-len("_error_barrier_mean")] for k in next(iter(starts.values())) if k.endswith("_error_barrier_mean")]
    lines = ["# Linear mode connectivity (barrier)", "",
             f"{results['runs']} runs per start, every pair interpolated at {len(gammas)} points; BN statistics: "
             f"{results['bn']}.", ""]
    for split in splits:
        fig, axes = plt.subplots(1, len(starts), figsize=(4.2 * len(starts), 3.6), sharey=True, squeeze=False)
        for ax, (label, res) in zip(axes[0], starts.items()):
            curves = torch.tensor([p[f"{split}_error"] for p in res["pairs"]])
            for c in curves:
                ax.plot(gammas, c.tolist(), lw=0.8, alpha=0.6, color="tab:blue")
            ax.plot(gammas, curves.mean(0).tolist(), "k--", lw=1.6, label="mean")
            ax.set_title(f"{label}\nbarrier {percent(res[f'{split}_error_barrier_mean'])} ± "
                         f"{percent(res[f'{split}_error_barrier_std'])} pts", fontsize=9)
            ax.set_xlabel("γ")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{split} error")
        axes[0][0].legend(fontsize=8)
        save(fig, out_dir / "plots" / f"barrier_{split}.png")
        lines += [f"## {split} split", "", f"![barrier](plots/barrier_{split}.png)", "",
                  "| start | error barrier (pts) | loss barrier | endpoint error (%) | pairs |",
                  "|---|---|---|---|---|"]
        for label, res in starts.items():
            lines.append(f"| {label} | {percent(res[f'{split}_error_barrier_mean'])} ± "
                         f"{percent(res[f'{split}_error_barrier_std'])} | {res[f'{split}_loss_barrier_mean']:.4f} ± "
                         f"{res[f'{split}_loss_barrier_std']:.4f} | {percent(res[f'{split}_endpoint_error_mean'])} | "
                         f"{len(res['pairs'])} |")
        lines.append("")
    return "\n".join(lines)


@hookimpl
def rtlab_register(registry):
    registry.add("analysis", "barrier", Barrier, BarrierOptions)
