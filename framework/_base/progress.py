"""Progress of a long phase (dataset decode, feature extraction, BN re-estimation, probes, report panels), shared by
the core and the plugins; torch-free.

On a terminal a phase shows a bar with its rate and ETA (tqdm) once it has run for ``delay`` seconds; otherwise
(a log file, a SLURM job, a pipe) it writes one line every ``every`` seconds::

    rtlab: extracting features (student): 12,288/50,000 images (25%), 41 s, ETA 2 min 6 s

and nothing at all for a phase shorter than that. ``RTLAB_PROGRESS=0`` turns both off. Lines go to the ``rtlab``
logger when it shows INFO records (a training run's ``cli.log``), else to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")
log = logging.getLogger("rtlab")

DELAY_S = 2.0  # a terminal bar appears after this long
EVERY_S = 30.0  # a log line this often (RTLAB_PROGRESS_EVERY overrides it)


def enabled() -> bool:
    return os.environ.get("RTLAB_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def duration(seconds: float) -> str:
    """``41 s``, ``2 min 6 s``, ``1 h 3 min``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Progress:
    """One phase: ``update(n)`` as work gets done, ``close()`` at the end (or use it as a context manager).

    ``total`` None: a count without percentage or ETA. ``stream``, ``clock`` and ``every`` are for tests and
    callers with their own output; by default stderr, ``time.monotonic`` and 30 s (``RTLAB_PROGRESS_EVERY``)."""

    def __init__(self, what: str, total: int | None = None, unit: str = "it", *, stream: TextIO | None = None,
                 every: float | None = None, delay: float = DELAY_S, clock: Callable[[], float] = time.monotonic,
                 bar: bool | None = None, initial: int = 0) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every = float(os.environ.get("RTLAB_PROGRESS_EVERY", EVERY_S)) if every is None else every
        self.clock = clock
        self.start = self.last = clock()
        self.done = self.initial = initial
        self.on = enabled()
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = None
        if self.on and (tty if bar is None else bar):
            from tqdm.auto import tqdm  # lazy: only a terminal draws a bar

            self.bar = tqdm(total=total, desc=what, unit=unit, delay=delay, file=self.stream, dynamic_ncols=True,
                            leave=False, unit_scale=False, initial=initial)

    def line(self) -> str:
        """The log line of the moment."""
        elapsed = self.clock() - self.start
        if self.total:
            share = self.done / self.total
            rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0  # this attempt's work only
            eta = f", ETA {duration((self.total - self.done) / rate)}" if rate > 0 and share < 1 else ""
            return (f"rtlab: {self.what}: {self.done:,}/{self.total:,} {self.unit} ({100 * share:.0f}%), "
                    f"{duration(elapsed)}{eta}")
        return f"rtlab: {self.what}: {self.done:,} {self.unit}, {duration(elapsed)}"

    def _emit(self, text: str) -> None:
        if log.isEnabledFor(logging.INFO) and log.hasHandlers() and self.stream is sys.stderr:
            log.info("%s", text)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._emit(self.line())

    def close(self) -> None:
        """End the phase; a phase that logged lines logs its total time."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.on and self.last > self.start:  # it wrote lines: say that it finished
            self._emit(f"rtlab: {self.what}: done, {self.done:,} {self.unit} in {duration(self.clock() - self.start)}")
        self.on = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(items: Iterable[T], what: str, total: int | None = None, unit: str = "it", size: Callable[[T], int]
             | None = None, **kwargs: Any) -> Iterator[T]:
    """``items`` with a :class:`Progress` over them; ``size(item)`` counts each one (default 1), e.g. the images of
    a batch."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit, **kwargs) as p:
        for item in items:
            yield item
            p.update(size(item) if size is not None else 1)
