"""User-facing errors: one line that names the problem and the fix, and the exit code ``rtlab`` ends with.

Exit codes: 0 success; 1 a run finished but a plugin, evaluator or analysis failed (training results are kept), or a
plugin failed during training; 2 bad input (:class:`RtlabError`); 3 training diverged (:class:`TrainingDiverged`);
4 stopped by a signal (SIGTERM, SIGUSR1, SIGUSR2, Ctrl-C) with the training state saved (:class:`RunInterrupted`);
130 interrupted at once (a second Ctrl-C, or Ctrl-C outside training). ``docs/troubleshooting.md`` lists every message and its fix.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class RtlabError(Exception):
    """An error caused by the user's input. The CLI prints its message on one line and exits with code 2."""

    exit_code = 2


class TrainingDiverged(RtlabError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""

    exit_code = 3

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class RunInterrupted(Exception):
    """A signal stopped the run at a step boundary; ``checkpoints/last`` holds that step (see
    :mod:`framework._run.preemption`). Not an input error: a sweep stops at it instead of going on to the next job."""

    exit_code = 4


class PluginError(Exception):
    """A plugin's code raised an unexpected exception; the message names the plugin and where it failed."""

    exit_code = 1

    def __init__(self, plugin: str, where: str, error: BaseException, message: str | None = None) -> None:
        detail = " ".join(str(error).split())[:300]
        super().__init__(message or f"plugin '{plugin}' failed in {where}: {type(error).__name__}"
                         + (f": {detail}" if detail else ""))
        self.plugin = plugin
        self.where = where
        self.error = error


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Known names that look like ``name`` (case-insensitive, substring matches first)."""
    choices = sorted(set(choices))
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    subs = [c for c in choices if name.lower() in c.lower()] if len(name) >= 3 else []
    out: list[str] = []
    for c in subs[:n] + [lowered[h] for h in hits]:
        if c not in out:
            out.append(c)
    return out[:n]


def unknown_name(what: str, name: str, known: Iterable[str], hint: str = "") -> RtlabError:
    """``unknown <what> 'name'; did you mean …? known: …`` as an :class:`RtlabError`."""
    known = sorted(set(known))
    close = close_matches(name, known)
    msg = f"unknown {what} '{name}'"
    if close:
        msg += f"; did you mean {', '.join(close)}?"
    if len(known) <= 30:
        msg += f"{'' if close else ';'} known: {', '.join(known) if known else '(none)'}."
    else:
        msg += f" ({len(known)} known)"
    if hint:
        msg += f" {hint}"
    return RtlabError(msg)
