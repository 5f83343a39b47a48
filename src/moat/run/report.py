"""How a run tells its user what it is doing: live status on a terminal, plain lines otherwise.

Everything goes to stderr, so the agent's stdout stays exactly the agent's.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any, Protocol

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when not on a terminal


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def task(self, key: str, label: str) -> None: ...

    def update(self, key: str, text: str) -> None: ...

    def finish(self, key: str, message: str, ok: bool = True) -> None: ...

    def pause(self) -> None:
        """Stop any live display (before the agent writes to the terminal)."""


class PlainReporter:
    """One line per event; progress at most every few seconds per task."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._labels: dict[str, str] = {}
        self._last: dict[str, float] = {}

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

    def finish(self, key: str, message: str, ok: bool = True) -> None:
        self._labels.pop(key, None)
        self._emit(message if ok else f"failed: {message}")

    def pause(self) -> None:
        pass


class RichReporter:
    """A live list of what is in progress (spinners), with finished steps printed above it."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[str, str]] = {}
        self._live: Any = Live(console=self.console, refresh_per_second=12, transient=True,
                               get_renderable=self._render)
        self._started = False

    def _render(self) -> Any:
        table = Table.grid(padding=(0, 1))
        with self._lock:
            tasks = list(self._tasks.values())
        for label, text in tasks:
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

    def finish(self, key: str, message: str, ok: bool = True) -> None:
        with self._lock:
            self._tasks.pop(key, None)
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
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
