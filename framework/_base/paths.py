"""The files of a run folder, named once: one constant and one function per file.

A run folder holds ``config.yaml`` (the resolved configuration), ``plugins.json`` (the loaded plugins),
``metrics.jsonl`` (one JSON object per log and evaluation), ``summary.json`` (written when the run finishes),
``error.txt`` (the traceback of a crash), ``checkpoints/`` (``final``, ``epoch_N``, ``last`` = the training state),
``plots/``, the TensorBoard event files, and ``analyses/`` (analyses of this run, ``rtlab analyze NAME RUN``).
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
PLUGINS = "plugins.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ERROR = "error.txt"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
ANALYSES = "analyses"
STATE = "last"  # checkpoints/last: the full training state a resumed run continues from
FINAL = "final"  # checkpoints/final: the weights at the end


def config(run_dir: Path | str) -> Path:
    return Path(run_dir) / CONFIG


def plugins(run_dir: Path | str) -> Path:
    return Path(run_dir) / PLUGINS


def metrics(run_dir: Path | str) -> Path:
    return Path(run_dir) / METRICS


def summary(run_dir: Path | str) -> Path:
    return Path(run_dir) / SUMMARY


def error(run_dir: Path | str) -> Path:
    return Path(run_dir) / ERROR


def checkpoint(run_dir: Path | str, name: str) -> Path:
    """``checkpoints/<name>`` (the base of its ``.safetensors`` and ``.json`` files)."""
    return Path(run_dir) / CHECKPOINTS / name


def state(run_dir: Path | str) -> Path:
    return checkpoint(run_dir, STATE)


def final(run_dir: Path | str) -> Path:
    return checkpoint(run_dir, FINAL)


def plots(run_dir: Path | str) -> Path:
    return Path(run_dir) / PLOTS


def analyses(run_dir: Path | str) -> Path:
    return Path(run_dir) / ANALYSES
