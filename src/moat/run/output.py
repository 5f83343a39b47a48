"""The agent's output: shown live on the terminal as bytes arrive, recorded in logs.jsonl line by line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from moat.files import now_iso
from moat.run.store import RunRecord
from moat.runtime.base import OutputChunk

_FDS = {"stdout": 1, "stderr": 2}


class LineSplitter:
    """Bytes in, complete lines out (a partial line waits for its end, or for ``flush``)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        return [line.rstrip(b"\r").decode(errors="replace") for line in lines]

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, b""
        return [rest.decode(errors="replace")] if rest else []


def _write_all(fd: int, data: bytes) -> bool:
    """Write to the terminal; False once the reader has gone (a closed pipe must not stop the run)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return False
        except InterruptedError:
            continue
        view = view[written:]
    return True


def relay(chunks: Iterable[OutputChunk], record: RunRecord, on_first_line: Callable[[float], None],
          echo: bool = True) -> None:
    """Copy each chunk to our own stdout/stderr and each complete line, timestamped, to the record."""
    splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
    alive = {"stdout": echo, "stderr": echo}
    first = True
    for chunk in chunks:
        if alive[chunk.stream]:
            alive[chunk.stream] = _write_all(_FDS[chunk.stream], chunk.data)
        lines = splitters[chunk.stream].feed(chunk.data)
        if lines and first:
            first = False
            on_first_line(time.monotonic())
        stamp = now_iso()
        for line in lines:
            record.log(chunk.stream, line, ts=stamp)
    for stream, splitter in splitters.items():
        for line in splitter.flush():
            if first:
                first = False
                on_first_line(time.monotonic())
            record.log(stream, line)
