"""Signals outside a run's training steps (torch-free: ``rtlab`` installs these first thing, whatever the command).

SIGTERM, SIGUSR1 and SIGUSR2 kill a Python process by default (exit code 143/138, no word). ``rtlab`` replaces
that at start with :func:`early_handler`, which raises :class:`SignalStop` where the process is; the command ends
with exit code 4 and one line (:func:`framework._run.preemption.stop_line` for a run). While a run trains, its own
handlers (:class:`framework._run.preemption.Preemption`) take over and stop it at a step boundary with its state.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EARLY_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")  # Ctrl-C outside training keeps Python's KeyboardInterrupt (130)


class SignalStop(BaseException):
    """A scheduler's signal outside a run's training steps: the process stops at once (exit code 4). A
    ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the way swallows it."""

    exit_code = 4

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def early_handler(signum: int, frame: FrameType | None) -> None:
    raise SignalStop(signum)


def install_early() -> None:
    """At process start: SIGTERM, SIGUSR1 and SIGUSR2 raise :class:`SignalStop` instead of killing the process
    without a word (exit code 143/138). A signal whose handler is not the default (a job wrapper's own, an ignored
    one) is left alone; a run replaces these with its step-boundary handlers while it trains."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in EARLY_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, early_handler)
