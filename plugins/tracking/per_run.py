"""The state a tracker keeps for each live run (an open file, a writer, a bar): made on first use, closed once."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class PerRun(Generic[T]):
    """``open(run)`` makes a run's object the first time ``get(run)`` asks (None: nothing for this run);
    ``close(run)`` closes and forgets it. Runs are told apart by identity, so in-process runs (analyses, tests)
    never share a file."""

    def __init__(self, open: Callable[[Any], T | None], close: Callable[[T], None]) -> None:
        self._open, self._close = open, close
        self._objects: dict[int, T] = {}

    def get(self, run: Any) -> T | None:
        obj = self._objects.get(id(run))
        if obj is None:
            obj = self._open(run)
            if obj is not None:
                self._objects[id(run)] = obj
        return obj

    def peek(self, run: Any) -> T | None:
        """The run's object if it is open (never opens one)."""
        return self._objects.get(id(run))

    def close(self, run: Any) -> None:
        obj = self._objects.pop(id(run), None)
        if obj is not None:
            self._close(obj)
