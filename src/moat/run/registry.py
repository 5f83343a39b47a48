"""Reading the run store: every run, which are alive, and which one a user means.

A run is *active* while it is being created or running, and only while the moat process that owns
it (its ``pid`` on its ``host``) is alive: a run whose owner died (SIGKILL, a crash, a reboot) is
*orphaned*, and its engine objects are fair game for ``moat clean``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moat.constants import RUN_ID_PREFIX
from moat.errors import UsageError
from moat.ownership import process_alive
from moat.run.store import METADATA, RunStore

ACTIVE_STATES = frozenset({"created", "starting", "running"})


@dataclass(frozen=True)
class RunInfo:
    metadata: dict[str, Any]
    directory: Path

    @property
    def id(self) -> str:
        return str(self.metadata.get("id", self.directory.name))

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def recorded_state(self) -> str:
        return str(self.metadata.get("state", "unknown"))

    @property
    def owner_pid(self) -> int:
        """The owning moat process's pid (0 when the record does not say, or says nonsense)."""
        pid = self.metadata.get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else 0

    @property
    def owner_alive(self) -> bool:
        meta = self.metadata
        start = meta.get("pid_start")
        return process_alive(self.owner_pid, _text(meta.get("host")), start if isinstance(start, str) else None)

    @property
    def tearing_down(self) -> bool:
        """Its outcome is recorded but its owner is still removing what it started."""
        return self.recorded_state not in ACTIVE_STATES and not self.metadata.get("ended_at") \
            and self.owner_alive

    @property
    def active(self) -> bool:
        """Being created, running or tearing down, by a live owner: hands off."""
        return (self.recorded_state in ACTIVE_STATES and self.owner_alive) or self.tearing_down

    @property
    def orphaned(self) -> bool:
        """Its owner died before the run was over (started, running or tearing down)."""
        unfinished = self.recorded_state in ACTIVE_STATES or not self.metadata.get("ended_at")
        return unfinished and not self.owner_alive

    @property
    def state(self) -> str:
        """The recorded state; ``stopping`` while tearing down; ``orphaned`` if its owner is gone."""
        if self.orphaned:
            return "orphaned"
        if self.tearing_down:
            return "stopping"
        return self.recorded_state

    @property
    def created_at(self) -> datetime:
        return parse_time(self.metadata.get("created_at")) or datetime.fromtimestamp(0, UTC)

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.created_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """The stable ``moat list --json`` record (documented in the README)."""
        meta = self.metadata
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "exit_code": meta.get("exit_code"),
            "created_at": meta.get("created_at"),
            "started_at": meta.get("started_at"),
            "ended_at": meta.get("ended_at"),
            "age_seconds": round(self.age_seconds(), 3),
            "workspace": meta.get("workspace"),
            "runtime": meta.get("runtime"),
            "image": meta.get("image"),
            "services": [s.get("name") for s in meta.get("services", [])],
            "detached": bool(meta.get("detached", False)),
            "pid": meta.get("pid"),
        }


def _sane(metadata: dict[str, Any], directory: str) -> dict[str, Any]:
    """A record as the commands read it: a field of the wrong type (a hand-edited or half-written
    file) reads as absent, never as a crash of `moat list`."""
    clean = dict(metadata)
    for key in ("id", "name", "state", "created_at", "started_at", "ended_at", "host", "pid_start", "runtime",
                "image", "workspace", "error"):
        if key in clean and clean[key] is not None and not isinstance(clean[key], str):
            clean.pop(key)
    if not isinstance(clean.get("id"), str):
        clean["id"] = directory
    services = clean.get("services")
    clean["services"] = [s for s in services if isinstance(s, dict)] if isinstance(services, list) else []
    return clean


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class Registry:
    def __init__(self, store: RunStore) -> None:
        self.store = store

    def all(self) -> list[RunInfo]:
        """Every recorded run, newest first."""
        if not self.store.runs.is_dir():
            return []
        found = []
        for directory in self.store.runs.iterdir():
            try:
                metadata = json.loads((directory / METADATA).read_text())
            except (OSError, ValueError):
                continue  # not a run directory, or one being written for the first time
            if isinstance(metadata, dict):
                found.append(RunInfo(_sane(metadata, directory.name), directory))
        return sorted(found, key=lambda r: (r.created_at, r.id), reverse=True)

    def get(self, run_id: str) -> RunInfo | None:
        return next((r for r in self.all() if r.id == run_id), None)

    def resolve(self, reference: str) -> RunInfo:
        """By exact id, then name (the newest run of that name), then unique id prefix."""
        runs = self.all()
        exact = [r for r in runs if r.id == reference]
        if exact:
            return exact[0]
        named = [r for r in runs if r.name == reference]
        if named:
            return named[0]
        prefix = reference if reference.startswith(RUN_ID_PREFIX) else RUN_ID_PREFIX + reference
        matches = [r for r in runs if r.id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(f"{r.id} ({r.name})" for r in matches[:8])
            raise UsageError(f"'{reference}' matches {len(matches)} runs: {shown}; give more of the id")
        raise UsageError(f"no run '{reference}' (by id, id prefix or name); `moat list --all` shows them")

    def latest(self, *, active: bool) -> RunInfo:
        for run in self.all():
            if run.active or not active:
                return run
        raise UsageError("no active run" if active else "no runs yet")

    def remove(self, run: RunInfo) -> None:
        shutil.rmtree(run.directory)
