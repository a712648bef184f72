"""Pre-emption: a signal stops a run at the end of the current optimiser step, with its training state saved.

Schedulers stop jobs with signals: SLURM sends SIGTERM (and, with ``--signal=USR1@90``, SIGUSR1 ahead of the
time limit), submitit asks for SIGUSR2, a person presses Ctrl-C. While a run trains, each of these only sets a
flag; the loop checks it after every step (with several processes, every process agrees on the step through one
tiny all-reduce on the CPU), then

1. writes ``checkpoints/last`` at that step (the full training state, :mod:`framework._run.state`),
2. records ``interrupted`` (step and signal) in the run's summary — kept in the training state: ``summary.json``
   marks a *finished* run and is only written when the run ends, listing every interruption it survived,
3. hands the signal to the handler installed before the run, when that is a Python function (submitit's: it
   requeues the same job, which continues the run exactly), and otherwise
4. raises :class:`framework._base.errors.RunInterrupted`: ``rtlab`` exits with code 4.

``rtlab train resume=RUN_DIR`` (or ``resume=auto``; a sweep started again with the same ``hydra.sweep.dir``)
continues from that step exactly. A second Ctrl-C stops at once (``KeyboardInterrupt``, exit code 130).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from framework._nets import distributed
from framework._base.errors import RunInterrupted

if TYPE_CHECKING:
    from framework._run.internals import RunInternals as Run

log = logging.getLogger("rtlab")

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")


class Preemption:
    """The signal flag of one run (handlers installed by :meth:`install`, put back by :meth:`uninstall`)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> "Preemption":
        """Catch :data:`SIGNALS` (only possible in the main thread; elsewhere the run keeps the default actions)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self.previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    @contextlib.contextmanager
    def installed(self) -> Iterator["Preemption"]:
        """The handlers while the run trains (the ones before are put back after, also on errors)."""
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt  # the second Ctrl-C
        if self.signal is None:
            log.warning("%s received: stopping after this step (the training state will be saved)",
                        signal.Signals(signum).name)
        self.signal = signum

    def requested(self) -> bool:
        """Whether a signal arrived (on any process)."""
        if not distributed.active():
            return self.signal is not None
        flag = torch.tensor([0.0 if self.signal is None else float(self.signal)])  # CPU: gloo, no device sync
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signal is None:
            self.signal = int(flag.item())
        return bool(flag.item())

    def chained(self) -> Callable[[int, FrameType | None], Any] | None:
        """The Python handler the signal had before the run (submitit's requeue), if any."""
        handler = self.previous.get(self.signal) if self.signal is not None else None
        if not callable(handler) or handler is signal.default_int_handler:
            return None
        return handler

    def stop(self, run: "Run") -> None:
        """Save the training state at this step, record the interruption, requeue or raise :class:`RunInterrupted`."""
        name = signal.Signals(self.signal).name if self.signal else "signal"
        run.summary.setdefault("interrupted", []).append({"step": run.step, "signal": name})
        run.save_state()
        message = (f"{name} stopped the run at step {run.step}; its training state is in {run.state.path}; continue "
                   f"it with 'rtlab train resume={run.out_dir}'")
        log.warning("%s", message)
        handler = self.chained()
        if handler is not None:
            handler(self.signal, None)
        raise RunInterrupted(message)

    def check_after(self, run: "Run") -> None:
        """After the run: a signal that came during its last evaluation or its summary still stops the process (a
        sweep must not start its next job); the finished run is complete."""
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            raise RunInterrupted(f"{name} arrived while the run in {run.out_dir} finished; it is complete, the rest "
                                 "was not started")
