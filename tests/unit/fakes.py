"""A runtime that runs nothing: containers are records in memory, with scripted behaviour and faults.

It implements the whole ``Runtime`` protocol, so the run layer (startup, the agent's turn, hand-off,
teardown) is tested without an engine or a socket. Faults are injected by operation name.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from moat.errors import EngineError
from moat.plan.containers import HOLD_ABANDONED, ContainerSpec
from moat.plan.model import ImageSpec, Plan
from moat.runtime.base import (
    ContainerNotRunning,
    ContainerState,
    EngineObject,
    ExecResult,
    ExecStream,
    ImageConfig,
    ImageInfo,
    LabelledObjects,
    NotFound,
    OutputChunk,
    ProgressCallback,
)
from tests.helpers import wait_for


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    labels: dict[str, str]
    status: str = "created"  # created | running | exited
    exit_code: int | None = None
    released: bool = False
    signals: list[int] = field(default_factory=list)
    log: str = ""


@dataclass
class AgentScript:
    """What the agent does once released: output chunks, then an exit code (or wait for a signal)."""

    chunks: list[OutputChunk] = field(default_factory=list)
    exit_code: int = 0
    until_signal: bool = False  # run until a signal arrives; exit 128+signal
    ignore: tuple[int, ...] = ()  # signals it ignores (it still dies when stopped)
    stream_error: Exception | None = None  # the output stream breaks with this


class FakeRuntime:
    name = "fake"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.containers: dict[str, FakeContainer] = {}
        self.created: dict[str, FakeContainer] = {}  # every container ever created, removed ones too
        self.networks: dict[str, dict[str, str]] = {}
        self.images_present: set[str] = {"moat-test/redis:latest", "moat-test/postgres:latest",
                                         "debian:bookworm-slim"}  # as `make engine` builds it
        # socat -d -d in a strict pod's holder, once it listens (tests make it silent)
        self.holder_log = "2026/11/26 06:00:00 socat[1] N listening on AF=2 127.0.0.1:19080\n"
        self.calls: list[tuple[str, str]] = []
        self.faults: dict[str, Callable[[str], None]] = {}  # operation → raises for an id
        self.agent = AgentScript()
        self.probe_results: dict[str, list[ExecResult]] = {}  # service → results, the last one repeats
        self.exec_log: list[tuple[str, tuple[str, ...]]] = []
        self.exec_envs: list[Mapping[str, str]] = []  # each exec's environment, in exec_log's order
        self.counter = 0
        self.changed = threading.Condition(self.lock)
        self.on_create: Callable[[FakeContainer], None] | None = None

    # --- helpers for tests ---------------------------------------------------------------------

    def fault(self, operation: str, error: Exception, only: Callable[[str], bool] = lambda _id: True) -> None:
        def fail(object_id: str) -> None:
            if only(object_id):
                raise error

        self.faults[operation] = fail

    def _check(self, operation: str, object_id: str = "") -> None:
        self.calls.append((operation, object_id))
        fault = self.faults.get(operation)
        if fault is not None:
            fault(object_id)

    def warm_makers(self) -> set[str]:
        """The containers that made warm templates (after the run's own were gone)."""
        return {i for i, c in self.created.items() if c.labels.get("moat.role") == "warm"}

    def by_role(self, role: str) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.spec.role == role]

    def left(self) -> list[str]:
        return [*self.containers, *self.networks]

    def _exit(self, container: FakeContainer, code: int) -> None:
        with self.changed:
            container.status = "exited"
            container.exit_code = code
            self.changed.notify_all()

    def _get(self, container_id: str) -> FakeContainer:
        with self.lock:
            if container_id not in self.containers:
                raise NotFound(f"no container {container_id}")
            return self.containers[container_id]

    # --- the protocol ----------------------------------------------------------------------------

    def ping(self) -> None:
        self._check("ping")

    def version(self) -> str:
        return "fake 1.0"

    def caveats(self, plan: Plan) -> list[str]:
        return []

    def image_exists(self, ref: str) -> bool:
        self._check("image_exists", ref)
        return ref in self.images_present

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        self._check("build_image", image.tag)
        on_line("Step 1/1 : FROM debian")
        self.images_present.add(image.tag)

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None:
        self._check("pull_image", ref)
        raise EngineError(f"could not pull image {ref}: not found")

    def images(self, repository: str) -> list[ImageInfo]:
        return []

    def remove_image(self, image_id: str) -> None:
        self._check("remove_image", image_id)

    def image_config(self, ref: str) -> ImageConfig:
        self._check("image_config", ref)
        digest = hashlib.sha256(ref.encode()).hexdigest()
        return ImageConfig(f"sha256:{digest}", ("docker-entrypoint.sh",), ("serve",))

    def export_path(self, container_id: str, path: str) -> Iterator[bytes]:
        """A tar of what the service initialised there: one file naming the path."""
        self._check("export_path", container_id)
        top = path.rstrip("/").rsplit("/", 1)[-1]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            data = f"initialised {path}\n".encode()
            info = tarfile.TarInfo(f"{top}/INITIALISED")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        yield buffer.getvalue()

    def create_network(self, name: str, labels: Mapping[str, str], scratch: str) -> str:
        self._check("create_network", name)
        with self.lock:
            self.networks[name] = dict(labels)
        return name

    def host_gateway(self) -> str:
        self._check("host_gateway", "")
        return "172.17.0.1"

    def remove_network(self, name: str) -> None:
        self._check("remove_network", name)
        with self.lock:
            attached = [c.id for c in self.containers.values() if c.spec.network == name]
            if attached:
                raise EngineError(f"network {name} has active endpoints: {attached}")
            self.networks.pop(name, None)

    def create_container(self, spec: ContainerSpec, labels: Mapping[str, str]) -> str:
        self._check("create_container", spec.name)
        with self.lock:
            self.counter += 1
            container_id = f"{spec.role}-{spec.service or 'agent'}-{self.counter:04d}"
            container = FakeContainer(container_id, spec, {**spec.labels, **labels})
            self.containers[container_id] = container
            self.created[container_id] = container
        if self.on_create is not None:
            self.on_create(container)
        return container_id

    def start_container(self, container_id: str) -> None:
        self._check("start_container", container_id)
        container = self._get(container_id)
        joined = container.spec.network.removeprefix("container:")
        if joined != container.spec.network:  # as Docker: a pod's holder must run before others join it
            holders = [c for c in self.containers.values() if joined in (c.id, c.spec.name)]
            if not holders or holders[0].status != "running":
                raise EngineError(f"cannot join network of a non running container: {joined}")
        with self.changed:
            container.status = "running"
            self.changed.notify_all()
        if container.spec.role == "agent" and not container.spec.held:
            self._go(container)
        if container.spec.role == "relay":
            container.log = "ready\n"  # as moat's relay says once it listens
        if container.spec.role == "holder":
            container.log = self.holder_log  # socat -d -d, once it listens

    def release(self, container_id: str) -> None:
        self._check("release", container_id)
        container = self._get(container_id)
        if container.status != "running":
            raise ContainerNotRunning("the agent is not running")
        self._go(container)

    def _go(self, container: FakeContainer) -> None:
        container.released = True
        if not self.agent.until_signal:
            threading.Timer(0.05, self._exit, (container, self.agent.exit_code)).start()

    def signal(self, container_id: str, signum: int) -> None:
        self._check("signal", container_id)
        container = self._get(container_id)
        container.signals.append(signum)
        if container.status == "running" and signum not in self.agent.ignore:
            self._exit(container, HOLD_ABANDONED if not container.released else 128 + signum)

    def stop_container(self, container_id: str, timeout: float) -> None:
        self._check("stop_container", container_id)
        with self.lock:
            container = self.containers.get(container_id)
        if container is not None and container.status == "running":
            # A service making a warm template shuts down cleanly when stopped (its STOPSIGNAL).
            self._exit(container, 0 if container.labels.get("moat.role") == "warm" else 137)

    def remove_container(self, container_id: str) -> None:
        self._check("remove_container", container_id)
        with self.changed:
            container = self.containers.pop(container_id, None)
            if container is not None and container.status == "running":
                container.status = "exited"
                container.exit_code = 137
            self.changed.notify_all()

    def state(self, container_id: str) -> ContainerState:
        self._check("state", container_id)
        container = self._get(container_id)
        return ContainerState(container.status == "running",
                              container.exit_code if container.status == "exited" else None, container.status)

    def wait(self, container_id: str) -> int:
        self._check("wait", container_id)
        with self.changed:
            while True:
                container = self.containers.get(container_id)
                if container is None or container.status == "exited":
                    return container.exit_code if container is not None and container.exit_code is not None else 137
                self.changed.wait(0.05)

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        self._check("attach", container_id)
        script = self.agent

        def chunks() -> Iterator[OutputChunk]:
            yield from script.chunks
            if script.stream_error is not None:
                raise script.stream_error
            with self.changed:
                while (c := self.containers.get(container_id)) is not None and c.status != "exited":
                    self.changed.wait(0.05)

        return chunks()

    def attach_terminal(self, container_id: str) -> int:
        self.start_container(container_id)
        return self.wait(container_id)

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str:
        self._check("logs", container_id)
        container = self._get(container_id)
        lines = container.log.splitlines()
        if tail is not None:
            lines = lines[-tail:]
        return "\n".join(lines) + ("\n" if lines else "")

    def follow_logs(self, container_id: str, tail: int | None = None) -> Iterator[str]:
        yield from self.logs(container_id, tail).splitlines()

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult:
        self._check("exec", container_id)
        container = self._get(container_id)
        if container.status != "running":
            raise ContainerNotRunning(f"{container_id} is not running")
        self.exec_log.append((container_id, command))
        self.exec_envs.append(dict(env))
        results = self.probe_results.get(container.spec.service or "", [])
        if not results:
            return ExecResult(0, "1\nPONG\n")
        return results.pop(0) if len(results) > 1 else results[0]

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream:
        result = self.exec(container_id, command, env)
        return ExecStream(iter([OutputChunk("stdout", result.output.encode())]), lambda: result.exit_code)

    def container_address(self, container_id: str, network: str) -> str | None:
        return None

    def container_env(self, container_id: str) -> dict[str, str]:
        return dict(self._get(container_id).spec.env)

    def disconnect(self, container_id: str, network: str) -> None:
        self._check("disconnect", container_id)
        with self.lock:
            container = self.containers.get(container_id)
            if container is not None:
                container.spec = ContainerSpec(**{**container.spec.__dict__, "network": "none"})

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects:
        self._check("find_labelled")

        def match(own: Mapping[str, str]) -> bool:
            return all(k in own and (not v or own[k] == v) for k, v in labels.items())

        with self.lock:
            return LabelledObjects([c.id for c in self.containers.values() if match(c.labels)],
                                   [n for n, lab in self.networks.items() if match(lab)], [])

    def objects_with_label(self, key: str) -> list[EngineObject]:
        with self.lock:
            found = [EngineObject("container", c.id, c.labels) for c in self.containers.values() if key in c.labels]
            found += [EngineObject("network", n, lab) for n, lab in self.networks.items() if key in lab]
        return found

    def remove_volume(self, name: str) -> None:
        self._check("remove_volume", name)


wait_until = wait_for  # the same patience as the end-to-end tests


class FakeProxy:
    """moat's proxy as a run sees it (``moat.run.proxyuse.ProxyClient``), recording every call."""

    def __init__(self, port: int = 41234) -> None:
        self.port = port
        self.calls: list[tuple[str, str]] = []
        self.registered: dict[str, Any] = {}  # run id → Registration
        self.faults: dict[str, Callable[[], None]] = {}
        self.lock = threading.Lock()

    def _check(self, operation: str, detail: str = "") -> None:
        with self.lock:
            self.calls.append((operation, detail))
        fault = self.faults.get(operation)
        if fault is not None:
            fault()

    def ensure_running(self) -> None:
        self._check("ensure_running")

    def listen(self, host: str) -> int:
        self._check("listen", host)
        return self.port

    def register(self, registration: Any) -> None:
        self._check("register", registration.run_id)
        with self.lock:
            self.registered[registration.run_id] = registration

    def unregister(self, run_id: str) -> None:
        self._check("unregister", run_id)
        with self.lock:
            self.registered.pop(run_id, None)
