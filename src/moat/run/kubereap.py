"""Kubernetes runs' pods when their moat process is not the one to delete them: ``moat stop`` of an
orphan, ``moat destroy``, ``moat clean`` (by the run's labels; deleting a pod deletes what it owns)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moat.config.home import load_home_config
from moat.errors import MoatError
from moat.ownership import home_id
from moat.run.reaper import settle_orphan
from moat.run.registry import Registry, RunInfo
from moat.runtime.kubernetes import backend_at, where
from moat.runtime.kubernetes.backend import PodBackend, RunPod

Target = tuple[str, str, str | None]  # engine, namespace, context


@dataclass(frozen=True)
class Stray:
    """An object of a run that no pod owns (its moat killed while it created them)."""

    target: Target
    backend: PodBackend
    kind: str
    name: str
    run_id: str

    def remove(self) -> None:
        self.backend.remove_stray(self.kind, self.name)


@dataclass(frozen=True)
class Leftover:
    target: Target
    backend: PodBackend
    pod: RunPod
    why: str
    run: RunInfo | None  # its run's record, when there is one

    def remove(self) -> None:
        """The pod (and what it owns) deleted; an orphaned run's record says it failed."""
        self.backend.delete(self.pod.name, grace=0)
        if self.run is not None and self.run.orphaned:
            settle_orphan(self.run)


def delete_pod(info: RunInfo, home: Path) -> str:
    """The run's pod (and what it owns) deleted; what was done, for the user."""
    found = where(info.metadata)
    if found is None or not found[3]:
        return f"{info.id} ({info.name}): no pod recorded"
    engine, namespace, context, pod = found
    backend_at(engine, namespace, context, home).delete(pod, grace=0, run_id=info.id)
    return f"{info.id} ({info.name}): deleted its pod {pod}" + (f" in {namespace}" if engine == "cluster" else "")


def targets(registry: Registry, home: Path) -> list[Target]:
    """Where this MOAT_HOME's Kubernetes runs went: their records, and the configured place."""
    found: dict[Target, None] = {}
    for info in registry.all():
        place = where(info.metadata)
        if place is not None:
            found[_target(*place[:3])] = None
    config = load_home_config(home)
    if config.file is not None:
        settings = config.kubernetes
        found[_target(settings.engine, settings.namespace, settings.context)] = None
    return list(found)


def _target(engine: str, namespace: str, context: str | None) -> Target:
    # podman has one place whatever the namespace said: looked at once
    return ("podman", "", None) if engine == "podman" else (engine, namespace, context)


def leftovers(registry: Registry, home: Path) -> tuple[list[Leftover], list[Stray], list[str]]:
    """Pods of this MOAT_HOME whose run is not active (ended, orphaned, or with no record at all),
    the objects of such runs that no pod owns; and, for each place that could not be looked at, why."""
    mine = home_id(home)
    found: list[Leftover] = []
    strays: list[Stray] = []
    problems: list[str] = []
    for target in targets(registry, home):
        try:
            backend = backend_at(*target, home)
            pods = backend.pods()
            loose = backend.strays(mine)
        except MoatError as exc:
            problems.append(f"kubernetes ({target[0]}{', ' + target[1] if target[1] else ''}): {exc.message}")
            continue
        for pod in pods:
            if pod.home != mine:
                continue  # another MOAT_HOME's (or another user's) run
            info = registry.get(pod.run_id)
            if info is not None and info.active:
                continue
            why = "no record of its run" if info is None else f"its run is {info.state}"
            found.append(Leftover(target, backend, pod, why, info))
        for kind, name, run_id in loose:
            info = registry.get(run_id) if run_id else None
            if info is None or not info.active:
                strays.append(Stray(target, backend, kind, name, run_id))
    return found, strays, problems
