"""The agent's output: shown live on the terminal as bytes arrive, recorded in logs.jsonl line by line.

For the record, ``\\r`` ends a line as ``\\n`` does (a progress bar redrawing itself 40,000 times is
40,000 short lines, not one huge one), and a line longer than ``MAX_LINE`` bytes is recorded in
pieces marked ``"cut": true``. Splitting looks only at new bytes, so its cost is linear in the output
whatever its shape.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from moat.runtime.base import OutputChunk

MAX_LINE = 64 * 1024  # bytes
_FDS = {"stdout": 1, "stderr": 2}
_BREAK = re.compile(rb"\r\n|\r|\n")


class LineSink(Protocol):
    def log(self, stream: str, line: str, ts: str | None = None, **extra: object) -> None: ...


def _utf8_cut(data: bytes | bytearray | memoryview, limit: int) -> int:
    """A cut position at or below ``limit`` that does not split a UTF-8 character."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


class Secrets(Protocol):
    @property
    def longest(self) -> int: ...

    def spans(self, value: str) -> list[tuple[int, int]]: ...


class LineSplitter:
    """Bytes in, complete lines out: ``(text, cut)`` pairs, ``cut`` for a piece of an over-long line.

    A cut never falls inside a secret (``secrets``): each piece is masked on its own when recorded, so
    a password cut in two would be recorded in two readable halves.
    """

    def __init__(self, max_line: int = MAX_LINE, secrets: Secrets | None = None) -> None:
        self.max_line = max_line
        self.secrets = secrets
        self._pending = bytearray()
        self._after_cr = False  # the last chunk ended in \r: a \n starting the next one ends nothing

    def feed(self, data: bytes) -> list[tuple[str, bool]]:
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        self._after_cr = data.endswith(b"\r")
        pieces = _BREAK.split(data)
        out: list[tuple[str, bool]] = []
        for piece in pieces[:-1]:
            self._pending += piece
            out += self._cut_long()
            out.append((self._pending.decode(errors="replace"), False))
            self._pending.clear()
        self._pending += pieces[-1]
        out += self._cut_long()
        return out

    def _cut_long(self) -> list[tuple[str, bool]]:
        out = []
        start, pending = 0, self._pending
        while len(pending) - start > self.max_line:
            cut = self._around_secrets(pending, start, start + _utf8_cut(memoryview(pending)[start:], self.max_line))
            out.append((bytes(pending[start:cut]).decode(errors="replace"), True))
            start = cut
        if start:
            del pending[:start]  # once: the cost stays linear however large the chunk
        return out

    def _around_secrets(self, pending: bytearray, start: int, cut: int) -> int:
        """``cut``, moved back to the start of a secret that would straddle it."""
        reach = self.secrets.longest * 4 if self.secrets is not None else 0  # bytes: up to 4 a character
        if not reach:
            return cut
        window_start = max(start, cut - reach)
        window = bytes(pending[window_start:cut + reach]).decode(errors="replace")
        before = len(bytes(pending[window_start:cut]).decode(errors="replace"))
        for begin, end in self.secrets.spans(window):  # type: ignore[union-attr]
            if begin < before < end:
                moved = window_start + len(window[:begin].encode())
                return moved if moved > start else cut
        return cut

    def flush(self) -> list[tuple[str, bool]]:
        rest = self._pending.decode(errors="replace")
        self._pending.clear()
        return [(rest, False)] if rest else []


def _write_all(fd: int, data: bytes) -> bool:
    """Write to the terminal; False once it is gone (a closed pipe or a hung-up terminal must not
    stop the run: the agent goes on, and its output is still recorded)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:  # EPIPE, or EIO from a terminal that was closed
            return False
        view = view[written:]
    return True


def relay(chunks: Iterable[OutputChunk], record: LineSink, on_first_line: Callable[[float], None],
          echo: bool = True, now: Callable[[], str] | None = None, secrets: Secrets | None = None) -> None:
    """Copy each chunk to our own stdout/stderr and each complete line, timestamped, to the record."""
    from moat.files import now_iso  # noqa: PLC0415 — keeps this module's import light

    stamp_now = now or now_iso
    splitters = {"stdout": LineSplitter(secrets=secrets), "stderr": LineSplitter(secrets=secrets)}
    alive = {"stdout": echo, "stderr": echo}
    first = True

    def write(stream: str, lines: list[tuple[str, bool]], stamp: str | None) -> None:
        nonlocal first
        if lines and first:
            first = False
            on_first_line(time.monotonic())
        for text, cut in lines:
            if cut:
                record.log(stream, text, ts=stamp, cut=True)
            else:
                record.log(stream, text, ts=stamp)

    for chunk in chunks:
        if alive[chunk.stream]:
            alive[chunk.stream] = _write_all(_FDS[chunk.stream], chunk.data)
        lines = splitters[chunk.stream].feed(chunk.data)
        if lines:
            write(chunk.stream, lines, stamp_now())
    for stream, splitter in splitters.items():
        write(stream, splitter.flush(), None)
