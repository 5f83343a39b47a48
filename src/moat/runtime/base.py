"""The narrow boundary every runtime (docker, sandbox, …) implements, and the values it speaks in.

Orchestration (``moat.run``) talks only to this protocol. Each method is one engine operation with a
typed result; no method knows about moat.yaml, the catalog or run policy (which containers to hold,
whose files to hand back: that is decided in the plan). Every failure, including one that happens
while a stream is being read, arrives as an ``EngineError`` (or one of the subclasses below): a
runtime translates its SDK's exceptions in one place, so nothing above it ever sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from moat.errors import EngineError
from moat.plan.containers import ContainerSpec
from moat.plan.model import ImageSpec, Plan


class NotFound(EngineError):
    """The container, network, volume or image does not exist (any more)."""


class ContainerNotRunning(EngineError):
    """An operation needed a running container and it has stopped."""


class ProgramNotFound(EngineError):
    """A command run in a container names a program the container does not have."""

    def __init__(self, program: str, detail: str = "") -> None:
        super().__init__(f"`{program}` is not in the container" + (f": {detail}" if detail else ""))
        self.program = program


class EngineGone(EngineError):
    """The engine stopped answering in the middle of an operation (it was stopped or restarted)."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str  # stdout and stderr together, decoded


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int | None  # set once the container has stopped
    status: str  # the engine's word: created, running, exited, …
    oom_killed: bool = False


@dataclass(frozen=True)
class OutputChunk:
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True)
class ExecStream:
    """A command running in a container: its output as it comes, then its exit code."""

    chunks: Iterator[OutputChunk]
    exit_code: Callable[[], int]  # call once ``chunks`` is exhausted


@dataclass(frozen=True)
class EngineObject:
    kind: str  # "container" | "network" | "volume"
    id: str  # container id, network name or volume name
    labels: Mapping[str, str]


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    size: int
    in_use: bool  # some container (running or not) uses it
    labels: Mapping[str, str]
    created: float  # seconds since the epoch


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str  # "" in the sandbox (the host's programs)
    status: str  # created, running, exited, …
    created: float  # seconds since the epoch (0: unknown)
    labels: Mapping[str, str]


@dataclass(frozen=True)
class LabelledObjects:
    containers: list[str]
    networks: list[str]
    volumes: list[str]


@dataclass(frozen=True)
class ImageConfig:
    id: str  # the image's content digest: what a warm template is made from
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]


ProgressCallback = Callable[[str], None]


class Runtime(Protocol):
    name: str

    # --- the engine ------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise ``EngineError`` (with how to start one) when the engine does not answer."""

    def version(self) -> str: ...

    def caveats(self, plan: Plan) -> list[str]:
        """What this runtime will not do exactly as planned (a service version it cannot provide, a
        limit it cannot enforce), said before the run starts: a setting is never silently ignored."""

    # --- images ----------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool: ...

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        """Make the agent's image (or check the host has its tools); ``no_cache``: ``--rebuild``."""

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None: ...

    def images(self, repository: str) -> list[ImageInfo]: ...

    def remove_image(self, image_id: str) -> None: ...

    def image_config(self, ref: str) -> ImageConfig:
        """An image that exists: its id, entrypoint and command."""

    def export_path(self, container_id: str, path: str) -> Iterator[bytes]:
        """A tar archive of ``path`` in a (stopped) container, its top directory named after it."""

    # --- the run's network (the pod) ----------------------------------------------------------------

    def create_network(self, name: str, labels: Mapping[str, str], scratch: str) -> str:
        """The network every container of the run joins; ``scratch`` is a private directory the
        plan assigned to the run, for what the runtime must keep on the host."""

    def remove_network(self, name: str) -> None:
        """Idempotent: a network already gone is removed."""

    def host_gateway(self) -> str:
        """The host's address as containers reach it (``host-gateway``): where moat's proxy listens
        for them. Only runtimes whose plans route the proxy through the gateway need one."""

    # --- containers ------------------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec, labels: Mapping[str, str]) -> str:
        """Create (not start) the container ``spec`` describes, with these extra labels; its id."""

    def start_container(self, container_id: str) -> None: ...

    def release(self, container_id: str) -> None:
        """Let a held container (``spec.held``) go on: write its go line."""

    def signal(self, container_id: str, signum: int) -> None:
        """Deliver a signal to the container's main process (not an error if it has stopped)."""

    def stop_container(self, container_id: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""

    def remove_container(self, container_id: str) -> None:
        """Force-remove with its anonymous volumes; idempotent."""

    def state(self, container_id: str) -> ContainerState:
        """Raises ``NotFound`` for a container that does not exist."""

    def wait(self, container_id: str) -> int: ...

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        """Output as it is produced; attach before start so nothing is missed. Reading the iterator
        raises ``EngineError`` (``EngineGone`` when the engine went away), never an SDK error."""

    def attach_terminal(self, container_id: str) -> int:
        """Start the container with this process's terminal attached; its exit code."""

    def exec_terminal(self, container_id: str, command: tuple[str, ...], user: str, workdir: str) -> int:
        """Run a command in a running container with this process's stdin, stdout and stderr (a
        terminal when it has one), as ``user`` (uid:gid); its exit code (``moat exec``, ``moat join``)."""

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str: ...

    def follow_logs(self, container_id: str, tail: int | None = None) -> Iterator[str]:
        """The log as it grows (timestamped lines), until the container stops."""

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult:
        """Run a command inside; ``ProgramNotFound`` when the container lacks its program,
        ``ContainerNotRunning`` when the container has stopped."""

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream: ...

    def container_address(self, container_id: str, network: str) -> str | None:
        """Its IP on ``network``, when the host can use one."""

    def container_env(self, container_id: str) -> dict[str, str]:
        """The environment its main process was given (to mask a live service's passwords)."""

    def disconnect(self, container_id: str, network: str) -> None: ...

    # --- everything labelled ---------------------------------------------------------------------

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects: ...

    def objects_with_label(self, key: str) -> list[EngineObject]:
        """Every container, network and volume carrying label ``key`` (any value)."""

    def remove_volume(self, name: str) -> None: ...

    def fill_volume(self, name: str, image: str, labels: Mapping[str, str], archive: BinaryIO) -> None:
        """A new engine volume with the tar ``archive`` unpacked at its root (a volume workspace)."""

    def export_volume(self, name: str, image: str) -> Iterator[bytes]:
        """An engine volume's contents as a tar (top directory ``workspace``)."""

    def containers(self, key: str) -> list[ContainerInfo]:
        """Every container (running or not) carrying label ``key``, with its name, image and status."""
