"""The run's engine objects: each one registered in the run's scope the moment it exists, and how
each one goes away.

``Pod`` creates (network, containers, cache holds) through the runtime and registers what it made;
``Remover`` is the scope's one way to remove a resource, in this process or in a detached run's
supervisor (it works from the resource's plain record alone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moat.cache import HostCache
from moat.constants import LABEL_RUN_ID
from moat.credentials.rules import Registration
from moat.errors import EngineError, MoatError
from moat.files import private_dir, write_private
from moat.plan.containers import ContainerSpec
from moat.plan.model import Plan
from moat.run.proxyuse import ProxyClient
from moat.run.scope import Resource, Scope
from moat.run.store import SERVICE_LOGS_DIR, RunRecord
from moat.runtime.base import Runtime

AGENT_STOP_GRACE = 5.0  # seconds an ending agent gets between SIGTERM and SIGKILL
CACHE_HOLD_TIMEOUT = 30.0  # seconds to wait for `moat cache clean` to finish with a cache

NETWORK = "network"
CONTAINER = "container"
CACHE_HOLD = "cache-hold"
SWEEP = "sweep"
PROXY_REGISTRATION = "proxy-registration"
DIRECTORY = "directory"


class TeardownProblem(MoatError):
    """One or more steps of removing a resource failed (each is said)."""


def _text(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or getattr(exc, "strerror", None) or exc)


@dataclass
class AgentState:
    """What teardown must know about the agent: whether it ever ran, and whether to keep it."""

    keep: bool = False
    released: set[str] = field(default_factory=set)  # container ids whose command was let run

    def ran(self, container_id: str) -> bool:
        return container_id in self.released


class Pod:
    """Creates the run's engine objects and registers each in the scope as it comes into being."""

    def __init__(self, plan: Plan, runtime: Runtime, scope: Scope, owner_labels: Mapping[str, str],
                 holds: CacheHolds) -> None:
        self.plan = plan
        self.runtime = runtime
        self.scope = scope
        self.owner_labels = dict(owner_labels)
        self.holds = holds
        # Everything else lives inside the sweep: it runs last and removes by label whatever a
        # creation that failed half-way left behind.
        self.sweep = scope.add(Resource(SWEEP, plan.run_id, "leftovers labelled with this run"))
        self.network: Resource | None = None

    def create_network(self) -> None:
        plan = self.plan
        self.runtime.create_network(plan.network, {**plan.labels, **self.owner_labels}, str(plan.scratch))
        self.network = self.scope.add(Resource(NETWORK, plan.network, f"network {plan.network}"), [self.sweep])

    def create_holder(self, spec: ContainerSpec) -> str:
        """A strict pod's holder (its image exists): created and started, it is the run's network;
        every other container lives inside it and is removed before it."""
        container_id, self.network = self._create(spec, ())
        self.runtime.start_container(container_id)
        return container_id

    def register_proxy(self, proxy: ProxyClient, registration: Registration) -> Resource:
        """The run's grants and token in the shared proxy, until teardown unregisters them. In the
        scope before the call: a registration that answered too late is still removed."""
        resource = self.scope.add(Resource(PROXY_REGISTRATION, registration.run_id, "the run's grants in moat's proxy"),
                                  [self.sweep])
        proxy.register(registration)
        return resource

    def hold_cache(self, service: str, abort: threading.Event) -> Resource:
        """The shared in-use lock on a service's host cache, for as long as its sidecar has it."""
        self.holds.take(service, abort)
        return self.scope.add(Resource(CACHE_HOLD, service, f"{service}'s cache", local=True), [self.sweep])

    def create_container(self, spec: ContainerSpec, inside: tuple[Resource, ...] = ()) -> str:
        return self._create(spec, inside)[0]

    def discard(self, container_id: str) -> None:
        """A container the run gives up on in its course (a warm start that failed): gone now."""
        self.runtime.remove_container(container_id)
        self.scope.forget(Resource(CONTAINER, container_id))

    def _create(self, spec: ContainerSpec, inside: tuple[Resource, ...]) -> tuple[str, Resource]:
        for mount in spec.mounts:
            for excluded in mount.excluded:
                make_excluded(Path(mount.source), excluded)
            if mount.create:
                source = Path(mount.source)
                if os.path.lexists(source) and (source.is_symlink() or not source.is_dir()):
                    raise EngineError(f"{mount.source} should be a directory of moat's, and is not (a link?)",
                                      hint="Remove it; moat makes it again.")
                created = not Path(mount.source).exists()
                if mount.reach_from is not None:
                    reachable_parents(Path(mount.reach_from), source.parent)
                private_dir(Path(mount.source))
                if created and mount.owner is not None and os.getuid() == 0 and mount.owner[0] != 0:
                    # The agent's to write in; through a descriptor of the directory just made (a
                    # symlink put in its place meanwhile is refused, never followed).
                    fd = os.open(mount.source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                    try:
                        os.fchown(fd, *mount.owner)
                    finally:
                        os.close(fd)
        holding: dict[str, Resource] = {}  # the directories of the container's files: removed after it
        for mount in spec.mounts:  # a directory moat made in the run's scratch (the endpoints' sockets)
            if mount.create and Path(mount.source).is_relative_to(self.plan.scratch):
                holding[mount.source] = self.scope.add(
                    Resource(DIRECTORY, mount.source, f"directory {mount.source}",
                             (("prune_parent", "1"), ("role", spec.role))), [self.sweep])
        for path, text in spec.files:
            directory = Path(path).parent
            # In the scope first: removed with the run, however far the writing got. Its parent (the
            # run's scratch directory) goes too once empty: other users of it remove their own.
            holding[str(directory)] = self.scope.add(
                Resource(DIRECTORY, str(directory), f"directory {directory}",
                         (("prune_parent", "1"), ("role", spec.role))), [self.sweep])
            private_dir(directory)  # 0700: no other user of the host reads it
            # Readable by the agent's uid, which may not be moat's: what these files hold is never a
            # secret (placeholders, the agent's context), and they are mounted read-only.
            write_private(Path(path), text, mode=0o644)
        container_id = self.runtime.create_container(spec, self.owner_labels)
        attrs = [("role", spec.role), ("name", spec.name)]
        if spec.service:
            attrs.append(("service", spec.service))
        parents = [self.sweep, *inside, *holding.values()]
        if self.network is not None:
            parents.append(self.network)
        return container_id, self.scope.add(Resource(CONTAINER, container_id, spec.name, tuple(attrs)), parents)


class CacheHolds:
    """The in-use locks this process holds on host caches (never handed over: another process
    takes its own)."""

    def __init__(self, cache: HostCache) -> None:
        self.cache = cache
        self._stack = contextlib.ExitStack()
        self._held: dict[str, contextlib.ExitStack] = {}
        self._lock = threading.Lock()

    def take(self, service: str, abort: threading.Event) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(self.cache.in_use(service, time.monotonic() + CACHE_HOLD_TIMEOUT, abort))
        with self._lock:
            self._held[service] = stack

    def release(self, service: str) -> None:
        with self._lock:
            stack = self._held.pop(service, None)
        if stack is not None:
            stack.close()

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held), {}
        for service in held:
            self.release(service)


class Remover:
    """How each kind of resource goes away (the scope calls it, children before parents)."""

    def __init__(self, plan: Plan, runtime: Runtime, record: RunRecord, holds: CacheHolds,
                 agent: AgentState, proxy: ProxyClient) -> None:
        self.plan = plan
        self.proxy = proxy
        self.runtime = runtime
        self.record = record
        self.holds = holds
        self.agent = agent
        self.kept: str | None = None  # the agent container kept with --keep
        # What went wrong without leaving anything behind (a log that could not be saved).
        self.notes: list[str] = []

    def __call__(self, resource: Resource) -> None:
        if resource.kind == CONTAINER:
            self._container(resource)
        elif resource.kind == NETWORK:
            self.runtime.remove_network(resource.id)
        elif resource.kind == CACHE_HOLD:
            self.holds.release(resource.id)
        elif resource.kind == SWEEP:
            self._sweep()
        elif resource.kind == PROXY_REGISTRATION:
            self.proxy.unregister(resource.id)
        elif resource.kind == DIRECTORY:
            if self.kept and resource.attr("role") == "agent":
                # A kept agent's mounts must exist for Docker to show its files (`docker cp`).
                self.notes.append(f"the kept agent's mounted files stay in {resource.id}")
                return
            shutil.rmtree(resource.id, ignore_errors=True)
            if resource.attr("prune_parent"):
                with contextlib.suppress(OSError):  # not empty (or gone): not ours to remove
                    Path(resource.id).parent.rmdir()
        else:
            raise TeardownProblem(f"moat does not know how to remove a {resource.kind}")

    def _container(self, resource: Resource) -> None:
        problems: list[str] = []
        container_id = resource.id
        if resource.attr("role") == "service":
            service = resource.attr("service")
            try:
                self.record.write_file(f"{SERVICE_LOGS_DIR}/{service}.log",
                                       self.runtime.logs(container_id, timestamps=True))
            except Exception as exc:  # whatever it was, the container must still go
                self.notes.append(f"could not save {service}'s log: {_text(exc)}")
            self.notes += self._hand_back_cache(service, container_id)
        elif self.agent.ran(container_id):
            # SIGTERM first, as `docker stop` does: an agent may want to save its work.
            try:
                self.runtime.stop_container(container_id, AGENT_STOP_GRACE)
            except MoatError as exc:
                self.notes.append(f"could not stop the agent: {exc.message}")
            if self.agent.keep:
                self.kept = container_id
                # The container stays for the user to look at (logs, files, `docker commit`). Off the
                # run's network, which goes next; in a pod it has no network of its own to leave (and
                # cannot start again once its pod's holder is gone).
                if self.plan.holder is None:
                    self.runtime.disconnect(container_id, self.plan.network)
                return
        try:
            self.runtime.remove_container(container_id)
        except MoatError as exc:
            problems.append(f"could not remove {resource.label()}: {exc.message}")
        if problems:
            raise TeardownProblem("; ".join(problems))

    def _hand_back_cache(self, service: str, container_id: str) -> list[str]:
        """The sidecar wrote the host cache as root: give what it wrote to the user running moat, so
        `moat cache clean` (and the user) can remove it without privileges."""
        spec = next((s for s in self.plan.services if s.name == service), None)
        if spec is None or not spec.hand_back_cache or spec.cache_path is None:
            return []
        uid, gid = os.getuid(), os.getgid()
        try:
            self.runtime.exec(container_id, ("chown", "-R", f"{uid}:{gid}", spec.cache_path), {})
        except MoatError as exc:
            return [f"could not give {service}'s cache files back to you: {exc.message}"]
        return []

    def _sweep(self) -> None:
        """Anything labelled with this run that is still there (a creation cut short by a signal)."""
        left = self.runtime.find_labelled({LABEL_RUN_ID: self.plan.run_id})
        problems = []
        for container in left.containers:
            if container == self.kept:
                continue
            try:
                self.runtime.remove_container(container)
            except MoatError as exc:
                problems.append(exc.message)
        for network in left.networks:
            try:
                self.runtime.remove_network(network)
            except MoatError as exc:
                problems.append(exc.message)
        for volume in left.volumes:
            try:
                self.runtime.remove_volume(volume)
            except MoatError as exc:
                problems.append(exc.message)
        if problems:
            raise TeardownProblem("; ".join(problems))


def make_excluded(source: Path, excluded: str) -> None:
    """The directory an excluded path's in-memory one is laid over, made in the mount's source (on the
    host) when missing, as the owner of the directory it is made in: the engine would make it, as
    root. Made one level at a time, never through a link (one put there since the plan is refused)."""
    parent = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    walked = source
    try:
        for part in excluded.split("/"):
            walked /= part
            try:
                os.mkdir(part, 0o755, dir_fd=parent)
                made = True
            except FileExistsError:
                made = False
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            except OSError as exc:
                raise EngineError(f"cannot exclude {source / excluded}: {walked} is not a directory ({exc.strerror})",
                                  hint="Exclude a directory (or a path that does not exist).") from None
            if made and os.getuid() == 0:
                owner = os.fstat(parent)
                os.fchown(child, owner.st_uid, owner.st_gid)
            os.close(parent)
            parent = child
    except PermissionError as exc:
        raise EngineError(f"cannot make {source / excluded} to exclude it: {exc.strerror}",
                          hint="Create the directory yourself, or exclude one you can create.") from None
    finally:
        os.close(parent)


def reachable_parents(top: Path, path: Path) -> None:
    """``path`` and the directories between ``top`` and it, made 0711 where missing (``top`` as
    private_dir makes it): searchable by another user, listable by none."""
    private_dir(top)
    for part in path.relative_to(top).parts:
        top /= part
        try:
            top.mkdir(mode=0o711)
        except FileExistsError:
            continue
        top.chmod(0o711)
