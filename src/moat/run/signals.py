"""SIGINT and SIGTERM as one exit path.

While a run works, both signals raise ``Interrupted`` in the main thread, so the ``finally`` that tears
the run down always runs. While it tears down, further signals are noted, not obeyed: a second Ctrl-C
must not leave half the run behind.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def _handlers(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; callers there get default behaviour
        return
    previous = {sig: signal.signal(sig, handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    with _handlers(raise_interrupted):
        yield


@contextmanager
def interrupts_deferred(notice: Callable[[int], None]) -> Iterator[list[int]]:
    """Record signals instead of acting on them; yields the list of those received."""
    received: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        notice(signum)

    with _handlers(note):
        yield received
