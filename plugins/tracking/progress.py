"""A tqdm progress bar over training steps, with the latest KL (the headline) and loss, and "evaluating…" while the
probes run.

The distillation loss is a cross-entropy H(p_teacher, p_student) = H(p_teacher) + KL(p_teacher‖p_student): for a
frozen teacher its first term is a constant (≈ ln out_dim, 8.318 for 4,096 outputs) that hides the part that moves,
so the bar shows ``kl`` first when the loss logs it, then ``loss``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from framework.api import hookimpl, parse_key


@dataclass
class ProgressSettings:
    enabled: bool = True


_bars: dict[int, object] = {}


@hookimpl
def rtlab_register(registry):
    registry.add_settings("progress", ProgressSettings)


@hookimpl
def rtlab_run_start(run):
    if not run.cfg.progress.enabled:
        return
    from tqdm.auto import tqdm

    d = run.data
    print(f"rtlab: {run.cfg.name}: {run.cfg.backbone.name} on {d.name} ({len(d.train)} train / {len(d.test)} test, "
          f"{d.channels}x{d.size[0]}x{d.size[1]}), {run.epochs} epochs, device {run.device}, "
          f"output {run.out_dir}", file=sys.stderr)
    _bars[id(run)] = tqdm(total=run.total_steps, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr,
                          initial=run.step)


@hookimpl
def rtlab_step_end(run, metrics):
    bar = _bars.get(id(run))
    if bar is None:
        return
    bar.n = metrics["step"]  # type: ignore[attr-defined]
    bar.set_postfix(postfix(metrics), refresh=True)  # type: ignore[attr-defined]


def postfix(metrics: dict) -> dict:
    """What the bar shows after the step count: ``kl`` (when logged), ``loss``, ``epoch``."""
    post = {}
    if "train/kl" in metrics:
        post["kl"] = f"{metrics['train/kl']:.4g}"
    post["loss"] = f"{metrics['train/loss']:.4g}"
    post["epoch"] = f"{metrics['epoch']:.2f}"
    return post


@hookimpl
def rtlab_evaluate_start(run, epoch):
    bar = _bars.get(id(run))
    if bar is not None:
        bar.set_description(f"evaluating… (epoch {epoch})", refresh=True)  # type: ignore[attr-defined]


@hookimpl
def rtlab_evaluate_end(run, epoch, results):
    bar = _bars.get(id(run))
    shown = {k: v for k, v in results.items() if getattr(parse_key(k), "target", None) == "student"}
    if bar is not None:
        bar.set_description("train", refresh=True)  # type: ignore[attr-defined]
    if bar is not None and shown:
        bar.write("epoch %d: %s" % (epoch, "  ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))))


def _close(run) -> None:
    bar = _bars.pop(id(run), None)
    if bar is not None:
        bar.close()  # type: ignore[attr-defined]


@hookimpl
def rtlab_summarize(run, summary):
    _close(run)  # training is over: the bar must not redraw below the results printed at run end


@hookimpl
def rtlab_run_error(run, error):
    _close(run)
