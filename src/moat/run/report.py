"""How a run tells its user what it is doing: live status on a terminal, plain lines otherwise.

Everything goes to stderr, so the agent's stdout stays exactly the agent's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import IO, Any, Protocol

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when not on a terminal


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def task(self, key: str, label: str) -> None: ...

    def update(self, key: str, text: str) -> None: ...

    def progress(self, key: str, completed: int, total: int) -> None:
        """Bytes done of a total (a download): a bar with rate on a terminal."""

    def finish(self, key: str, message: str, ok: bool | None = True) -> None:
        """A task ended: done (True), failed (False), or neither (None: cancelled)."""

    def pause(self) -> None:
        """Stop any live display (before the agent writes to the terminal)."""


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


class Rate:
    """Bytes per second over the last few seconds of samples."""

    WINDOW = 3.0

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, completed: int) -> float:
        now = time.monotonic()
        self.samples.append((now, completed))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.WINDOW:
            self.samples.popleft()
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 and c1 >= c0 else 0.0


def progress_text(completed: int, total: int, rate: float) -> str:
    percent = f"{100 * completed / total:.0f}% " if total else ""
    speed = f", {human_bytes(rate)}/s" if rate > 0 else ""
    return f"{percent}({human_bytes(completed)}/{human_bytes(total)}{speed})"


class PlainReporter:
    """One line per event; progress at most every few seconds per task."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._labels: dict[str, str] = {}
        self._last: dict[str, float] = {}
        self._rates: dict[str, Rate] = {}

    def _emit(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"moat: {text}\n")
            self.stream.flush()

    def info(self, message: str) -> None:
        self._emit(message)

    def warn(self, message: str) -> None:
        self._emit(f"warning: {message}")

    def task(self, key: str, label: str) -> None:
        self._labels[key] = label
        self._last[key] = time.monotonic()
        self._emit(f"{label}...")

    def update(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, 0.0) >= PLAIN_PROGRESS_EVERY:
            self._last[key] = now
            self._emit(f"{self._labels.get(key, key)}: {text}")

    def progress(self, key: str, completed: int, total: int) -> None:
        rate = self._rates.setdefault(key, Rate()).add(completed)
        self.update(key, progress_text(completed, total, rate))

    def finish(self, key: str, message: str, ok: bool | None = True) -> None:
        self._labels.pop(key, None)
        self._rates.pop(key, None)
        self._emit(f"failed: {message}" if ok is False else message)

    def pause(self) -> None:
        pass


class RichReporter:
    """A live list of what is in progress (spinners), with finished steps printed above it."""

    def __init__(self) -> None:
        # rich only for a terminal: a piped or detached run (CI, an agent's) does not pay its import.
        from rich.console import Console  # noqa: PLC0415
        from rich.live import Live  # noqa: PLC0415

        self.console = Console(stderr=True)
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[str, str]] = {}
        self._bars: dict[str, tuple[int, int, Rate]] = {}
        self._live: Any = Live(console=self.console, refresh_per_second=12, transient=True,
                               get_renderable=self._render)
        self._started = False

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar  # noqa: PLC0415 — a terminal's only, as the others
        from rich.spinner import Spinner  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415

        table = Table.grid(padding=(0, 1))
        with self._lock:
            tasks = list(self._tasks.items())
            bars = dict(self._bars)
        for key, (label, text) in tasks:
            if key in bars:
                completed, total, _ = bars[key]
                bar: Any = ProgressBar(total=max(total, 1), completed=completed, width=30)
                table.add_row(Spinner("dots", style="cyan"), label, bar, f"[dim]{text}[/dim]")
            else:
                table.add_row(Spinner("dots", style="cyan"), label, f"[dim]{text}[/dim]")
        return table

    def _ensure_live(self) -> None:
        if not self._started:
            self._live.start()
            self._started = True

    def info(self, message: str) -> None:
        self.console.print(f"[bold cyan]moat[/] {message}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]moat warning[/] {message}", highlight=False)

    def task(self, key: str, label: str) -> None:
        with self._lock:
            self._tasks[key] = (label, "")
        self._ensure_live()

    def update(self, key: str, text: str) -> None:
        with self._lock:
            if key in self._tasks:
                self._tasks[key] = (self._tasks[key][0], text[-80:])

    def progress(self, key: str, completed: int, total: int) -> None:
        with self._lock:
            rate = self._bars[key][2] if key in self._bars else Rate()
            self._bars[key] = (completed, total, rate)
        self.update(key, progress_text(completed, total, rate.add(completed)))

    def finish(self, key: str, message: str, ok: bool | None = True) -> None:
        with self._lock:
            self._tasks.pop(key, None)
            self._bars.pop(key, None)
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}[ok]
        self.console.print(f"{mark} {message}", highlight=False)

    def pause(self) -> None:
        if self._started:
            self._live.stop()
            self._started = False


def reporter_for(stream: IO[str] | None = None) -> Reporter:
    """Rich on an interactive terminal, plain lines everywhere else (CI logs, pipes, files)."""
    target = stream or sys.stderr
    if target.isatty():
        return RichReporter()
    return PlainReporter(target)
