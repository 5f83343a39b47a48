"""The console entry point: a Ctrl-C from moat's first instant is moat's to answer.

Python's own SIGINT handler raises ``KeyboardInterrupt``; when that lands inside code run by
``exec``/``eval`` of a string (a dataclass's generated ``__init__`` while a module is imported), CPython
marks it "unhandled" for good and, however moat then answers it, ends the process by re-raising
SIGINT (status -2, and a traceback if it came during an import). So before anything else is imported
the handler raises :class:`Interrupted` instead: a ``KeyboardInterrupt`` for every ``except`` (click
turns it into an abort, exit 130) that CPython's exact-type check does not mistake for an unhandled one.
``moat run`` installs its own signal machine as soon as it has a plan.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

from moat.interrupts import EARLY_SIGINT


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (SIGINT) before a run's own signal handling took over."""


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    EARLY_SIGINT.set()  # should the exception be swallowed where it lands, the run still hears it
    raise Interrupted


def main(argv: list[str] | None = None) -> Any:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if the caller chose to ignore it
        signal.signal(signal.SIGINT, _interrupt)
    try:
        from moat.cli.main import main as moat_main
    except KeyboardInterrupt:  # while moat itself was being imported
        sys.stderr.write("\nInterrupted.\n")
        return 130
    return moat_main(argv)


if __name__ == "__main__":
    sys.exit(main())
