"""The thin protocol every runtime (docker, sandbox, …) implements, and the values it speaks in.

Orchestration (``moat.run``) talks only to this protocol. Each method is one engine operation; no
method knows about moat.yaml, the catalog or run policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from moat.errors import EngineError
from moat.plan.model import ImageSpec


class ContainerNotRunning(EngineError):
    """An operation needed a running container and it has stopped."""


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
class ContainerSpec:
    """A container to create; services and the agent both use it."""

    name: str
    image: str
    labels: Mapping[str, str]
    network: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    hostname: str | None = None
    aliases: tuple[str, ...] = ()  # names it answers to on the network
    working_dir: str | None = None
    binds: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # host path → (target, "rw"|"ro")
    tmpfs: tuple[str, ...] = ()  # directories in memory
    memory_mb: int | None = None
    cpus: float | None = None
    dns: tuple[str, ...] = ()
    ulimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    tty: bool = False
    stdin_open: bool = False
    init: bool = False  # a tiny init as PID 1: forwards signals, reaps zombies


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


@dataclass(frozen=True)
class LabelledObjects:
    containers: list[str]
    networks: list[str]
    volumes: list[str]


ProgressCallback = Callable[[str], None]


class Runtime(Protocol):
    name: str
    writes_as_root: bool  # service processes write host files as root (not as the invoking user)
    can_hold: bool  # a started container can wait for ``release`` (worth it where starting is slow)

    def ping(self) -> None:
        """Raise ``EngineError`` (with how to start one) when the engine does not answer."""

    def image_exists(self, ref: str) -> bool: ...

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        """Make the agent's image (or check the host has its tools); ``no_cache``: ``--rebuild``."""

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None: ...

    def create_network(self, name: str, labels: Mapping[str, str]) -> str: ...

    def remove_network(self, name: str) -> None: ...

    def create_container(self, spec: ContainerSpec) -> str:
        """Create (not start) a container; returns its id."""

    def start_container(self, container_id: str) -> None: ...

    def container_address(self, container_id: str, network: str) -> str | None:
        """Its IP on ``network``, when the host can use one."""

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult: ...

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream: ...

    def state(self, container_id: str) -> ContainerState: ...

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str: ...

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        """Output as it is produced; attach before start so nothing is missed."""

    def wait(self, container_id: str) -> int: ...

    def release(self, container_id: str) -> None:
        """Let a held container go on: write its go line."""

    def attach_terminal(self, container_id: str) -> int:
        """Start the container with this process's terminal attached; its exit code."""

    def stop_container(self, container_id: str, timeout: float) -> None: ...

    def remove_container(self, container_id: str) -> None:
        """Force-remove with its anonymous volumes; a missing container is not an error."""

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects: ...

    def remove_volume(self, name: str) -> None: ...

    def objects_with_label(self, key: str) -> list[EngineObject]:
        """Every container, network and volume carrying label ``key`` (any value)."""

    def images(self, repository: str) -> list[ImageInfo]: ...

    def remove_image(self, image_id: str) -> None: ...

    def version(self) -> str: ...

    def disconnect(self, container_id: str, network: str) -> None: ...
