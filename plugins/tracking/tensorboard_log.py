"""TensorBoard event files in the run folder (``tensorboard --logdir runs``).

Training metrics are logged at their step, evaluations as ``eval/<metric>/<target>`` at the step they ran (with
``eval/epoch``), so one x-axis serves both, and a resumed run's writer purges everything its interrupted attempt
logged after the saved state (TensorBoard's ``purge_step``) — no point appears twice.

At the end of a run its options (the flattened configuration) and final metrics (``final/<metric>/<target>``,
also logged as scalars) go to the HParams dashboard, so the jobs of a sweep compare there
(``tensorboard --logdir runs/NAME/multirun_TIME``)."""

from __future__ import annotations

from dataclasses import dataclass

from framework.api import hookimpl, paths
from plugins.tracking.per_run import PerRun


@dataclass
class TensorBoardSettings:
    enabled: bool = True
    hparams: bool = True  # the run's options and final metrics on the HParams dashboard


def _open(run):
    if not run.cfg.tensorboard.enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # a resumed run drops the events its crashed attempt logged after the saved state
    purge = run.resumed_step + 1 if run.resumed_step is not None else None
    return SummaryWriter(log_dir=str(run.out_dir), purge_step=purge)


_writers = PerRun(_open, lambda w: w.close())
_writer = _writers.get


@hookimpl
def rtlab_register(registry):
    registry.add_settings("tensorboard", TensorBoardSettings)


@hookimpl
def rtlab_run_start(run):
    w = _writer(run)
    if w is not None:
        w.add_text("config", "```\n" + paths.config(run.out_dir).read_text() + "\n```", 0)


@hookimpl
def rtlab_step_end(run, metrics):
    w = _writer(run)
    if w is not None:
        for k, v in metrics.items():
            if k not in ("step", "epoch"):
                w.add_scalar(k, v, metrics["step"])


@hookimpl
def rtlab_evaluate_end(run, epoch, results):
    w = _writer(run)
    if w is not None:
        w.add_scalar("eval/epoch", epoch, run.step)
        for k, v in results.items():
            w.add_scalar(f"eval/{k}", v, run.step)
        w.flush()


def log_hparams(writer, run, summary) -> None:
    """The run's options and final metrics for TensorBoard's HParams dashboard."""
    from omegaconf import OmegaConf
    from torch.utils.tensorboard.summary import hparams

    from plugins.tracking.trackers import final_values, flatten

    options = flatten(OmegaConf.to_container(run.cfg, resolve=True))
    final = final_values(summary)
    for part in hparams(options, final):
        writer.file_writer.add_summary(part)
    for tag, value in final.items():
        writer.add_scalar(tag, value, run.step)


@hookimpl
def rtlab_run_end(run, summary):
    w = _writer(run)
    if w is not None and run.cfg.tensorboard.hparams:
        log_hparams(w, run, summary)
    _writers.close(run)


@hookimpl
def rtlab_run_error(run, error):
    _writers.close(run)
