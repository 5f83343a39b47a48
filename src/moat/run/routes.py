"""The routing proxy's table: which run answers at ``<endpoint>.<host>.localhost``. One file per run
under ``MOAT_HOME/routes`` (0700), written atomically; adding one takes the table's lock, so that two
runs cannot both claim a host name. A route whose run is no longer active (by its record: a killed
moat cannot remove its own route) is dropped as soon as it is seen."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from moat.errors import UsageError
from moat.files import private_dir, write_private
from moat.run.registry import Registry
from moat.run.store import RunStore

ROUTES_DIR = "routes"


@dataclass(frozen=True)
class Route:
    run_id: str
    host: str  # the run's label: <endpoint>.<host>.localhost
    name: str  # the run's name, as given
    endpoints: Mapping[str, tuple[int, str]]  # endpoint → (the agent's port, the Unix socket reaching it)

    def to_json(self) -> dict[str, object]:
        return {"run_id": self.run_id, "host": self.host, "name": self.name,
                "endpoints": {k: {"port": p, "socket": s} for k, (p, s) in sorted(self.endpoints.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Route:
        raw = data.get("endpoints")
        endpoints = {str(k): (int(v["port"]), str(v["socket"])) for k, v in raw.items()} \
            if isinstance(raw, dict) else {}
        return cls(str(data["run_id"]), str(data["host"]), str(data.get("name", "")), endpoints)


class RouteTable:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / ROUTES_DIR
        self._lock = FileLock(str(self.dir / ".lock"), mode=0o600)

    def _path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.json"

    def add(self, route: Route) -> None:
        """The run's route, unless another live run has its host name (a clash: said, nothing added)."""
        private_dir(self.dir)
        with self._lock:
            for other in self.routes():
                if other.host == route.host and other.run_id != route.run_id:
                    raise UsageError(f"run {other.run_id} ({other.name}) already answers at {route.host}.localhost:"
                                     " two runs cannot publish ports under one name",
                                     hint="Give this run another name (-n NAME), or stop the other one.")
            write_private(self._path(route.run_id), json.dumps(route.to_json(), indent=2) + "\n")

    def remove(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(run_id).unlink()

    def routes(self) -> list[Route]:
        """The live routes (a dead run's is removed on sight)."""
        found = []
        paths = sorted(self.dir.glob("run_*.json")) if self.dir.is_dir() else []
        active = {r.id for r in Registry(RunStore(self.home)).all() if r.active} if paths else set()
        for path in paths:
            try:
                route = Route.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if route.run_id not in active:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(route)
        return found
