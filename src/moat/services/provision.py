"""Provisioning: fetching a service's items (ollama models) into the host cache, once it is ready.

Each item is a single argument of the catalog's command (``ollama pull {item}``), never part of a
shell string, and was validated before anything started. An item already in the cache is skipped.
Otherwise the cache's pull lock is taken (waiting, if another run is pulling into the same cache,
and then often finding the item cached) and the command runs with its progress shown and its
deadline enforced. What happens is told through ``ProvisionEvents``: this module knows nothing of
how a run reports or records.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from moat.cache import HostCache, LockAborted, LockTimeout
from moat.cache.layouts import normalize
from moat.catalog.model import Provisions
from moat.errors import MoatError
from moat.masking import Masker
from moat.plan.contract import fill_all
from moat.plan.model import ProvisionSpec, ServiceSpec
from moat.runtime.base import ContainerNotRunning, OutputChunk, Runtime
from moat.services.readiness import Aborted

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
LOG_PROGRESS_EVERY = 10.0  # seconds between progress records in logs.jsonl
TAIL_LINES = 15


class ProvisionError(MoatError):
    """An item could not be provisioned (its command failed, or its deadline passed)."""


@dataclass(frozen=True)
class Outcome:
    item: str
    status: str  # "cached" | "pulled" | "pulled by another run"
    seconds: float


class ProvisionEvents(Protocol):
    """Where provisioning says what it does: live status for the user, lines for the run's record."""

    def info(self, message: str) -> None: ...

    def task(self, key: str, label: str) -> None: ...

    def update(self, key: str, text: str) -> None: ...

    def progress(self, key: str, completed: int, total: int) -> None: ...

    def finish(self, key: str, message: str, ok: bool | None = True) -> None: ...

    def log(self, message: str, **fields: Any) -> None:
        """One line for the run's record."""


def listed(output: str, recipe: Provisions) -> set[str]:
    """The items a service's list command says it holds: the first word of each line but the header."""
    names = set()
    for line in output.splitlines():
        words = line.split()
        if words and words[0] != recipe.list_header:
            names.add(words[0])
    return names


def parse_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+) ?([kKMGT]?B)", text.strip()).groups()  # type: ignore[union-attr]
    return int(float(number) * _UNITS[unit.upper()])


class Provisioner:
    def __init__(self, runtime: Runtime, container_id: str, service: ServiceSpec, cache: HostCache,
                 events: ProvisionEvents, abort: threading.Event, masker: Masker) -> None:
        assert service.provision is not None
        self.runtime = runtime
        self.container_id = container_id
        self.service = service
        self.spec: ProvisionSpec = service.provision
        self.cache = cache
        self.events = events
        self.abort = abort
        self.masker = masker

    def run(self) -> list[Outcome]:
        present = self.present()
        return [self._one(item, present) for item in self.spec.items]

    def present(self) -> set[str]:
        """Items the service already has (in the mounted cache), by their listed names."""
        recipe = self.spec.recipe
        result = self.runtime.exec(self.container_id, recipe.list_command, {})
        if result.exit_code != 0:
            raise ProvisionError(
                f"{self.service.name}: listing its {self.spec.noun}s failed (exit {result.exit_code}):"
                f" {self.masker.text(result.output.strip())[-500:]}")
        return listed(result.output, recipe)

    def _key(self, item: str) -> str:
        return f"provision:{self.service.name}:{item}"

    def _one(self, item: str, present: set[str]) -> Outcome:
        name = normalize(item, self.spec.recipe.default_tag)
        started = time.monotonic()
        deadline = started + self.spec.timeout
        noun = self.spec.noun
        if name in present:
            return self._done(item, "cached", started, pulled=False)
        key = self._key(item)
        self.events.task(key, f"{self.service.name}: {noun} {item}")

        def waiting() -> None:
            message = f"waiting for another run that is pulling into the {self.service.name} cache"
            self.events.update(key, message)
            self.events.info(f"{self.service.name}: {noun} {item}: {message}")
            self._log(item, f"{noun} {item}: {message}")

        try:
            # One puller per cache: two models may share blobs, and two servers must never write
            # the same blob at once.
            with self.cache.pulling(self.service.name, deadline, self.abort, waiting):
                if name in self.present():  # another run pulled it while we waited
                    return self._done(item, "pulled by another run", started, pulled=False)
                self._pull(item, key, deadline)
        except LockAborted:
            raise Aborted from None
        except LockTimeout:
            self.events.finish(key, f"{self.service.name}: {noun} {item}", ok=False)
            raise self._timeout(item, "waiting for another run to finish pulling it") from None
        except ProvisionError:
            self.events.finish(key, f"{self.service.name}: {noun} {item}", ok=False)
            raise
        except Aborted:
            self.events.finish(key, f"{self.service.name}: {noun} {item}: not pulled (the run is ending)", ok=None)
            raise
        return self._done(item, "pulled", started, pulled=True)

    def _done(self, item: str, status: str, started: float, *, pulled: bool) -> Outcome:
        seconds = time.monotonic() - started
        self.cache.record_use(self.service.name, normalize(item, self.spec.recipe.default_tag), pulled=pulled,
                              image=self.service.image)
        message = f"{self.service.name}: {self.spec.noun} {item} {status}"
        if status != "cached":
            message += f" in {seconds:.1f}s"
        key = self._key(item)
        self.events.finish(key, message)
        self._log(item, message)
        return Outcome(item, status, seconds)

    def _pull(self, item: str, key: str, deadline: float) -> None:
        command = fill_all(self.spec.command, {"item": item})
        try:
            stream = self.runtime.exec_stream(self.container_id, command, {})
        except ContainerNotRunning:
            raise ProvisionError(f"{self.service.name} stopped while its {self.spec.noun}s were provisioned") from None
        pattern = re.compile(self.spec.recipe.progress_pattern) if self.spec.recipe.progress_pattern else None
        tail: list[str] = []  # the last lines of output, for the error message
        last_progress: str | None = None
        last_logged = 0.0
        self._log(item, f"pulling {self.spec.noun} {item}: {' '.join(command)}")
        for text in self._lines(stream.chunks, item, deadline):
            match = pattern.search(text) if pattern else None
            if match:
                done, total = parse_bytes(match["done"]), parse_bytes(match["total"])
                self.events.progress(key, done, total)
                if time.monotonic() - last_logged >= LOG_PROGRESS_EVERY:
                    last_logged = time.monotonic()
                    self._log(item, f"{item}: {done}/{total} bytes")
                last_progress = text
                continue
            if not tail or tail[-1] != text:
                tail.append(text)
                del tail[:-TAIL_LINES]
                self._log(item, text)
        code = stream.exit_code()
        if code != 0:
            lines = [*([last_progress] if last_progress else []), *tail]
            shown = "\n".join(f"    {self.masker.text(line)}" for line in lines) or "    (no output)"
            raise ProvisionError(
                f"{self.service.name}: pulling {self.spec.noun} '{item}' failed (exit {code})\n"
                f"  last output of `{' '.join(command)}`:\n{shown}",
                hint=f"Check the {self.spec.noun} name in services.{self.service.name}.{self.spec.key}"
                     f" (and your network access to its registry), or remove it from the list.",
            )

    def _lines(self, chunks: Iterator[OutputChunk], item: str, deadline: float) -> Iterator[str]:
        """Output lines as they come (``\\r`` redraws count as lines), honouring abort and deadline."""
        pipe: queue.Queue[OutputChunk | None] = queue.Queue()

        def read() -> None:
            try:
                for chunk in chunks:
                    pipe.put(chunk)
            except Exception as exc:  # the stream dies when teardown removes the container
                pipe.put(OutputChunk("stderr", f"\n(output stream ended: {exc})\n".encode()))
            finally:
                pipe.put(None)

        # A daemon thread: reading blocks in the socket, and must never keep moat from exiting.
        threading.Thread(target=read, name="exec-reader", daemon=True).start()
        pending = ""
        while True:
            if self.abort.is_set():
                raise Aborted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(item, "pulling it")
            try:
                chunk = pipe.get(timeout=min(0.1, remaining))
            except queue.Empty:
                continue
            if chunk is None:
                break
            pending += _ANSI.sub("", chunk.data.decode(errors="replace"))
            *lines, pending = re.split(r"[\r\n]", pending)
            yield from (line.strip() for line in lines if line.strip())
        if pending.strip():
            yield pending.strip()

    def _timeout(self, item: str, doing: str) -> ProvisionError:
        return ProvisionError(
            f"{self.service.name}: {self.spec.noun} '{item}' was not ready within"
            f" {self.spec.timeout:g}s (provision_timeout) while {doing}",
            hint=f"Raise services.{self.service.name}.provision_timeout for large {self.spec.noun}s or slow"
                 " networks.",
        )

    def _log(self, item: str, message: str) -> None:
        self.events.log(message, service=self.service.name, item=item)
