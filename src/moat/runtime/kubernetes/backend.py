"""What the Kubernetes run's controller needs of whatever runs its Pod: the cluster's API (``cluster``)
or ``podman kube play`` on this machine (``podman``). One method per operation; every failure an
``EngineError`` naming the object and what to do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from moat.errors import EngineError
from moat.plan.kube.manifests import Manifests


class ApiRefused(EngineError):
    """The API server said no (unauthorised, forbidden, not found, invalid): trying again changes nothing."""


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    state: str  # waiting | running | terminated
    reason: str = ""  # ImagePullBackOff, OOMKilled, Error, …
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class PodStatus:
    phase: str  # Pending | Running | Succeeded | Failed | Unknown | Gone
    containers: tuple[ContainerStatus, ...] = ()
    reason: str = ""  # Evicted, Unschedulable, …
    message: str = ""
    init_containers: tuple[ContainerStatus, ...] = ()

    def container(self, name: str) -> ContainerStatus | None:
        return next((c for c in self.containers if c.name == name), None)


@dataclass(frozen=True)
class RunPod:
    """A run's pod as a listing shows it."""

    name: str
    namespace: str
    run_id: str
    phase: str
    created: str
    home: str = ""  # the moat.home label: which MOAT_HOME's run it is


class PodBackend(Protocol):
    name: str  # cluster | podman

    def ping(self) -> None: ...

    def apply(self, manifests: Manifests) -> None:
        """Create every object; the Pod owns the others, so deleting it deletes them all."""

    def status(self, pod: str) -> PodStatus: ...

    def exec(self, pod: str, container: str, argv: tuple[str, ...], stdin: bytes | None = None,
             timeout: float = 60) -> tuple[int, bytes]:
        """Run ``argv`` in a running container; (exit code, stdout and stderr)."""

    def logs(self, pod: str, container: str, follow: bool) -> Iterator[bytes]: ...

    def delete(self, pod: str, grace: float = 10, run_id: str | None = None) -> None:
        """The pod and everything it owns, and (``run_id``) anything else labelled with the run even
        when the pod is gone; idempotent."""

    def strays(self, home: str) -> list[tuple[str, str, str]]:
        """(kind, name, run id) of objects of ``home``'s runs that no pod owns (a moat killed while it
        created them): what ``moat clean`` deletes besides pods."""

    def remove_stray(self, kind: str, name: str) -> None: ...

    def pods(self, run_id: str | None = None) -> list[RunPod]:
        """moat's pods (of one run, or all), by label."""
