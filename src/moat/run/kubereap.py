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
    backend_at(engine, namespace, context, home).delete(pod, grace=0)
    return f"{info.id} ({info.name}): deleted its pod {pod}" + (f" in {namespace}" if engine == "cluster" else "")


def targets(registry: Registry, home: Path) -> list[Target]:
    """Where this MOAT_HOME's Kubernetes runs went: their records, and the configured place."""
    found: dict[Target, None] = {}
    for info in registry.all():
        place = where(info.metadata)
        if place is not None:
            found[place[:3]] = None
    config = load_home_config(home)
    if config.file is not None:
        settings = config.kubernetes
        found[(settings.engine, settings.namespace, settings.context)] = None
    return list(found)


def leftovers(registry: Registry, home: Path) -> tuple[list[Leftover], list[str]]:
    """Pods of this MOAT_HOME whose run is not active (ended, orphaned, or with no record at all);
    and, for each place that could not be looked at, why."""
    mine = home_id(home)
    found: list[Leftover] = []
    problems: list[str] = []
    for target in targets(registry, home):
        try:
            backend = backend_at(*target, home)
            pods = backend.pods()
        except MoatError as exc:
            problems.append(f"kubernetes ({target[0]}, {target[1]}): {exc.message}")
            continue
        for pod in pods:
            if pod.home != mine:
                continue  # another MOAT_HOME's (or another user's) run
            info = registry.get(pod.run_id)
            if info is not None and info.active:
                continue
            why = "no record of its run" if info is None else f"its run is {info.state}"
            found.append(Leftover(target, backend, pod, why, info))
    return found, problems
