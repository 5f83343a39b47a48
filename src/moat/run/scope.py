"""One resource scope per run: what exists, in what it lives, and how it all goes away.

Each resource (the network, a service container, the agent's container, a host-cache hold, a
directory) is registered the moment it is created, with the resources it lives inside. Closing the
scope removes every resource before the ones it lives inside — in reverse order of creation, and
in parallel where nothing orders them — and runs *every* removal even when others fail: each
failure is recorded, none stops the rest.

A resource registered after the scope closed (a creation that was already under way when the run
was cancelled) is removed at once. A detached run hands what exists to its supervisor as a list of
plain records (``hand_over``), in one step after which this scope removes nothing of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_PARALLEL = 8


@dataclass(frozen=True)
class Resource:
    """Something a run created, described well enough for another process to remove it."""

    kind: str  # "network" | "container" | "cache-hold" | "directory" | "sweep" …
    id: str  # what the remover needs: a container id, a network name, a path
    name: str = ""  # how to call it in a message
    attrs: tuple[tuple[str, str], ...] = ()  # anything else its remover needs (role, service, …)
    local: bool = False  # only meaningful in the process that made it (a lock): never handed over

    def attr(self, key: str, default: str = "") -> str:
        return dict(self.attrs).get(key, default)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    def label(self) -> str:
        return self.name or f"{self.kind} {self.id[:12]}"

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "attrs": [list(pair) for pair in self.attrs]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Resource:
        attrs = tuple((str(k), str(v)) for k, v in record.get("attrs", ()))
        return cls(str(record["kind"]), str(record["id"]), str(record.get("name", "")), attrs,
                   bool(record.get("local", False)))


Remover = Callable[[Resource], None]


@dataclass
class _Entry:
    resource: Resource
    parents: tuple[str, ...]  # keys of the resources it lives inside
    order: int
    done: bool = False


@dataclass(frozen=True)
class Problem:
    resource: Resource
    message: str


@dataclass
class Scope:
    """Resources of one run, closed children first. ``remove`` knows how to remove each kind."""

    remove: Remover
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0
    closed: bool = False
    problems: list[Problem] = field(default_factory=list)

    def add(self, resource: Resource, inside: Iterable[Resource] = ()) -> Resource:
        """Register ``resource`` (living inside ``inside``). After ``close``, it is removed at once."""
        with self._lock:
            if not self.closed:
                self._counter += 1
                self._entries[resource.key] = _Entry(resource, tuple(p.key for p in inside), self._counter)
                return resource
        self._remove_one(resource)
        return resource

    def forget(self, resource: Resource) -> None:
        """It is gone by other means (removed as part of the run's normal course)."""
        with self._lock:
            self._entries.pop(resource.key, None)

    def resources(self) -> list[Resource]:
        with self._lock:
            return [e.resource for e in sorted(self._entries.values(), key=lambda e: e.order)]

    def close(self) -> list[Problem]:
        """Remove everything, children before parents; every removal runs. Idempotent."""
        with self._lock:
            self.closed = True
            pending = {k: e for k, e in self._entries.items() if not e.done}
        if pending:
            self._close(pending)
        return list(self.problems)

    def _close(self, pending: dict[str, _Entry]) -> None:
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(pending)), thread_name_prefix="teardown") as pool:
            while pending or running:
                for key in self._ready(pending, running):
                    entry = pending.pop(key)
                    running[pool.submit(self._remove_one, entry.resource)] = key
                if not running:
                    break  # a cycle cannot happen (parents exist first), but never spin
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    key = running.pop(future)
                    with self._lock:
                        if key in self._entries:
                            self._entries[key].done = True

    def _ready(self, pending: dict[str, _Entry], running: dict[Future[None], str]) -> list[str]:
        """Entries no pending or running entry lives inside; newest first."""
        busy = set(running.values())
        blocked = {parent for key, e in pending.items() for parent in e.parents} | {
            parent for key in busy if key in self._entries for parent in self._entries[key].parents}
        ready = [k for k in pending if k not in blocked]
        return sorted(ready, key=lambda k: pending[k].order, reverse=True)

    def _remove_one(self, resource: Resource) -> None:
        try:
            self.remove(resource)
        except Exception as exc:  # every removal runs; each failure is recorded
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.problems.append(Problem(resource, str(message)))

    def records(self) -> list[dict[str, Any]]:
        """What exists, as plain records another process can ``adopt`` (local resources excluded)."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.order)
            # Parents that are local (a cache hold) are kept by key: the adopting process takes its own
            # under the same key, so the order of removal holds there too.
            return [{"resource": e.resource.to_record(), "inside": list(e.parents)}
                    for e in entries if not e.resource.local]

    def hand_over(self) -> None:
        """From now on another process owns what ``records`` described: this scope removes none of it
        (only what means something here alone, such as locks, stays)."""
        with self._lock:
            self._entries = {k: e for k, e in self._entries.items() if e.resource.local}

    def adopt(self, records: Iterable[dict[str, Any]]) -> None:
        """Take over what another process handed over (in order, with what each lives inside)."""
        with self._lock:
            for record in records:
                resource = Resource.from_record(record["resource"])
                self._counter += 1
                self._entries[resource.key] = _Entry(resource, tuple(record.get("inside", ())), self._counter)
