"""``rtlab analyze landscape``: the objective and the probes on a plane of parameter space (docs/paper.md#fig-5).

The plane passes through three networks θ₀, θ₁, θ₂ (``analysis.points``, network specifications — the paper's
"shared view" is the teacher, the student distilled from α ≈ 0 and the student distilled from α = 1):
θ(a, b) = θ₀ + a·(θ₁ − θ₀) + b·(θ₂ − θ₀), for a, b on a ``grid`` x ``grid`` lattice over ``span``. At every point:

* the run's objective (for distillation, the CE/KL to the teacher given by ``analysis.teacher``) averaged over
  ``loss_images`` training images, with the network in train mode — the loss the optimiser sees;
* every configured evaluator (k-NN, linear probe, …) on the encoder, after the BatchNorm statistics of the point
  are re-estimated on the training images (``bn=reestimate``) or interpolated (``bn=interpolate``);
* ‖θ‖₂ (the paper's contour lines).

Finished grid rows are kept in ``grid.json``, so an interrupted analysis resumes at the next row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from framework.api import AnalysisOptions, atomic_write_text, features, hookimpl, load_network_state, RtlabError
from plugins.analysis.interpolation import check_bn_mode, combine, load_point
from plugins.analysis.sources import network_state, parse_spec
from plugins.tracking.plotting import pyplot, save


@dataclass
class LandscapeOptions(AnalysisOptions):
    points: List[str] = field(default_factory=list)  # θ₀ θ₁ θ₂: the origin and the two directions' ends
    teacher: Optional[str] = None  # teacher of the distillation loss (a network spec); None: the config's teacher
    grid: int = 13  # lattice points per axis (13 over [-0.25, 1.25]: steps of 1/8, the three points on the lattice)
    span: List[float] = field(default_factory=lambda: [-0.25, 1.25])  # range of a and b (0: θ₀, 1: θ₁ or θ₂)
    bn: str = "reestimate"  # reestimate | interpolate
    loss_images: Optional[int] = 2048  # training images the loss is averaged over (None: all)


class Landscape:
    """Loss and probe accuracy on the plane through three networks."""

    def __init__(self, opts: LandscapeOptions) -> None:
        if len(opts.points) != 3:
            raise RtlabError(f"analysis.points needs three networks (origin and two ends), got {len(opts.points)}; "
                             "e.g. [teacher:@local,student:@local,student:@far]")
        if opts.grid < 2 or len(opts.span) != 2 or not opts.span[0] < opts.span[1]:
            raise RtlabError("analysis.grid must be >= 2 and analysis.span two increasing numbers, e.g. [0,1]")
        if opts.loss_images is not None and opts.loss_images <= 0:
            raise RtlabError("analysis.loss_images must be positive (or null for all training images)")
        check_bn_mode(opts.bn)
        self.opts = opts
        self.points = [parse_spec(p) for p in opts.points]
        self.teacher = parse_spec(opts.teacher) if opts.teacher else None

    def run(self, ctx) -> dict:
        # checkpoints (and pretrain runs) first: the evaluation run below holds the data on the device
        loaded = {i: network_state(s, ctx.pretrained, None) for i, s in enumerate(self.points) if s.kind != "random"}
        teacher_state = network_state(self.teacher, ctx.pretrained, None) if self.teacher else None
        run = ctx.evaluation_run()
        states = [loaded[i] if i in loaded else network_state(s, ctx.pretrained, run.new_network)
                  for i, s in enumerate(self.points)]
        for spec, state in zip(self.points, states):
            load_network_state(run.student, state, "", spec.text)  # checks the architecture, with a clear error
        if teacher_state is not None and self.teacher is not None:
            load_network_state(run.teacher, teacher_state, "", self.teacher.text)
        coords = [self.opts.span[0] + (self.opts.span[1] - self.opts.span[0]) * i / (self.opts.grid - 1)
                  for i in range(self.opts.grid)]
        partial = ctx.out_dir / "grid.json"
        rows: list[list[dict]] = json.loads(partial.read_text())["rows"] if partial.exists() else []
        images = run.data.train.images
        n = len(images) if self.opts.loss_images is None else min(self.opts.loss_images, len(images))
        for i in range(len(rows), len(coords)):
            row = []
            for b in coords:
                a = coords[i]
                state = combine(states, [1.0 - a - b, a, b])
                row.append(self._point(run, state, n))
            rows.append(row)
            atomic_write_text(partial, json.dumps({"rows": rows}))
        at_points = [self._point(run, state, n) for state in states]
        return {"coords": coords, "points": [s.name for s in self.points], "at_points": at_points, "bn": self.opts.bn,
                "loss_images": n, "rows": rows}

    def _point(self, run, state: dict, n: int) -> dict:
        net = run.student
        load_point(net, state, self.opts.bn, run)
        out = {"norm": math.sqrt(sum(float(v.detach().double().pow(2).sum()) for v in net.parameters()))}
        feats = features(run, "student")
        for name, evaluator in run.evaluators.items():
            out.update({k: float(v) for k, v in evaluator.evaluate(feats, run).items()})
        del feats
        out.update(objective_value(run, n))
        return out

    def render(self, out_dir: Path, results: dict) -> str:
        return render_landscape(out_dir, results)


@torch.no_grad()
def objective_value(run, n: int) -> dict[str, float]:
    """The run's objective (and what it logs) averaged over the first ``n`` training images, the student in train
    mode as during training (its BatchNorm running statistics are left as they were)."""
    bs = run.cfg.train.batch_size
    saved = {k: v.clone() for k, v in run.student.state_dict().items() if not v.is_floating_point() or "running" in k}
    run.student.train()
    totals: dict[str, float] = {}
    try:
        for start in range(0, n, bs):
            index = torch.arange(start, min(start + bs, n), device=run.data.train.images.device)
            views = [run.prepare(run.data.train.images[index])]
            with run.autocast():
                loss, logs = run.objective.loss(run, views, index)
            weight = len(index) / n
            for k, v in {"loss": loss, **logs}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * weight
    finally:
        run.student.load_state_dict({**run.student.state_dict(), **saved})
        run.student.eval()
    return totals


def render_landscape(out_dir: Path, results: dict) -> str:
    """Heatmaps of the loss (log colours), the KL when the objective logs one, and each probe; the three points
    marked, ‖θ‖₂ as contour lines."""
    import numpy as np
    from matplotlib.colors import LogNorm

    plt = pyplot()
    coords = results["coords"]
    rows = results["rows"]
    keys = [k for k in rows[0][0] if k != "norm"]
    order = ["loss", "kl"] + sorted(k for k in keys if k not in ("loss", "kl", "teacher_entropy"))
    shown = [k for k in order if k in keys]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.4 * len(shown), 3.9), squeeze=False)
    norm = np.array([[p["norm"] for p in row] for row in rows])
    for ax, key in zip(axes[0], shown):
        grid = np.array([[p[key] for p in row] for row in rows])
        positive = key in ("loss", "kl") and bool((grid > 0).all())
        im = ax.pcolormesh(coords, coords, grid.T, shading="nearest", cmap="viridis_r" if key in ("loss", "kl")
                           else "viridis", norm=LogNorm() if positive else None)
        fig.colorbar(im, ax=ax)
        cs = ax.contour(coords, coords, norm.T, colors="white", linewidths=0.6, levels=5)
        ax.clabel(cs, fontsize=6, fmt="%.0f")
        for (x, y), label in zip([(0, 0), (1, 0), (0, 1)], results["points"]):
            ax.plot(x, y, "r*", ms=9)
            ax.annotate(label, (x, y), fontsize=7, color="red", xytext=(3, 3), textcoords="offset points")
        ax.set_title(key)
        ax.set_xlabel("a (towards θ₁)")
        ax.set_ylabel("b (towards θ₂)")
    save(fig, out_dir / "plots" / "landscape.png")
    lines = ["# Loss and probe landscape", "", "![landscape](plots/landscape.png)", "",
             f"Plane θ₀ + a·(θ₁ − θ₀) + b·(θ₂ − θ₀), {len(coords)}x{len(coords)} points over a, b ∈ "
             f"[{coords[0]:g}, {coords[-1]:g}]; BN statistics: {results['bn']}; loss over {results['loss_images']} "
             "training images.", "",
             "| point | network | " + " | ".join(shown) + " | ‖θ‖₂ |", "|---|---|" + "---|" * (len(shown) + 1)]
    for xy, p, label in zip([(0, 0), (1, 0), (0, 1)], results["at_points"], results["points"]):
        values = " | ".join(f"{p[k]:.4g}" for k in shown)
        lines.append(f"| {xy} | {label} | {values} | {p['norm']:.1f} |")
    return "\n".join(lines) + "\n"


@hookimpl
def rtlab_register(registry):
    registry.add("analysis", "landscape", Landscape, LandscapeOptions)
