"""When each phase of a run happened, in seconds since the run began (recorded as ``timings``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping


class Timeline:
    def __init__(self, clock: Callable[[], float] = time.monotonic, offset: float = 0.0,
                 marks: Mapping[str, float] | None = None) -> None:
        self._clock = clock
        self._start = clock() - offset
        self._marks: dict[str, float] = dict(marks or {})
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return self._clock() - self._start

    def mark(self, name: str, *, first: bool = False) -> float:
        """Note that ``name`` happened now (``first``: keep an earlier mark of the same name)."""
        at = self.elapsed()
        with self._lock:
            if not (first and name in self._marks):
                self._marks[name] = at
        return at

    def add(self, name: str, seconds: float) -> None:
        """A duration rather than a moment (how long one service took to be ready)."""
        with self._lock:
            self._marks[name] = seconds

    def marks(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in self._marks.items()}
