"""The Docker runtime: the ``Runtime`` protocol over the Docker Engine API (docker SDK).

Works with any engine speaking that API: Docker, or Podman's API socket (``DOCKER_HOST``). All engine
errors are translated here, in one place, into ``EngineError`` values with something to do.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Ulimit
from docker.utils import parse_repository_tag

from moat.errors import EngineError
from moat.plan.model import ImageSpec
from moat.runtime.base import (
    ContainerNotRunning,
    ContainerSpec,
    ContainerState,
    EngineObject,
    ExecResult,
    ExecStream,
    ImageInfo,
    LabelledObjects,
    OutputChunk,
    ProgressCallback,
)

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Builds run apt-get, pip and npm: the host network reaches what the host reaches, even where the
# engine's bridge has no outside route (e.g. dockerd --iptables=false).
BUILD_NETWORK = os.environ.get("MOAT_BUILD_NETWORK", "host")

_HOW_TO_START = (
    "Start Docker (e.g. `sudo systemctl start docker`, or open Docker Desktop), point DOCKER_HOST at a"
    " running engine or Podman socket (`podman system service`), or, in moat's own repository, run"
    " `make engine`."
)


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


@contextmanager
def _engine_call(action: str) -> Iterator[None]:
    """Translate engine failures into one error type that says what moat was doing."""
    try:
        yield
    except APIError as exc:
        explanation = exc.explanation or str(exc)
        if isinstance(explanation, bytes):
            explanation = explanation.decode(errors="replace")
        raise EngineError(f"{action} failed: {explanation}") from exc
    except DockerException as exc:
        raise EngineError(f"{action} failed: {exc}", hint=_HOW_TO_START) from exc
    except OSError as exc:  # a dropped socket mid-call
        raise EngineError(f"{action} failed: {exc}", hint=_HOW_TO_START) from exc


@contextmanager
def _in_container(action: str) -> Iterator[None]:
    """For operations inside a container: one that has stopped (or gone) says so as such."""
    try:
        yield
    except APIError as exc:
        if exc.status_code in {404, 409}:
            raise ContainerNotRunning(f"container is not running: {exc.explanation}") from None
        raise EngineError(f"{action} failed: {exc.explanation}") from exc


def _demuxed(stream: Iterator[tuple[bytes | None, bytes | None]]) -> Iterator[OutputChunk]:
    for out, err in stream:
        if out:
            yield OutputChunk("stdout", out)
        if err:
            yield OutputChunk("stderr", err)


@contextmanager
def _gone_is_fine(action: str, *fine_statuses: int) -> Iterator[None]:
    """For removals: an object that is already gone (or going) is what we wanted."""
    try:
        yield
    except NotFound:
        return
    except APIError as exc:
        if exc.status_code in fine_statuses:
            return
        raise EngineError(f"{action} failed: {exc.explanation}") from exc


class DockerRuntime:
    name = "docker"
    writes_as_root = True
    can_hold = True

    def __init__(self, client: Any | None = None) -> None:
        if client is None:
            try:
                client = docker.from_env(max_pool_size=32)
            except DockerException as exc:
                raise EngineError(
                    f"no container engine answers at {engine_address()}: {exc}", hint=_HOW_TO_START
                ) from None
        self.client = client
        self.api = client.api

    # --- engine ----------------------------------------------------------------------------------

    def ping(self) -> None:
        try:
            self.api.ping()
        except (DockerException, OSError) as exc:
            raise EngineError(
                f"no container engine answers at {engine_address()}: {exc}", hint=_HOW_TO_START
            ) from None

    # --- images ----------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        try:
            self.api.inspect_image(ref)
        except (ImageNotFound, NotFound):
            return False
        except APIError as exc:
            raise EngineError(f"inspecting image {ref} failed: {exc.explanation}") from exc
        return True

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        tag, dockerfile = image.tag, image.dockerfile
        recent: list[str] = []
        with _engine_call(f"building image {tag}"):
            events = self.api.build(
                fileobj=io.BytesIO(dockerfile.encode()),
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                labels=dict(labels),
                network_mode=BUILD_NETWORK,
                nocache=no_cache,
            )
            for event in events:
                if "error" in event:
                    detail = event.get("errorDetail", {}).get("message") or event["error"]
                    tail = "\n".join(f"    {line}" for line in recent[-15:])
                    raise EngineError(
                        f"building the agent image {tag} failed: {detail.strip()}\n  last build output:\n{tail}",
                        hint="Check the dependencies in moat.yaml (a pip:/npm: package name or version?)"
                        " and the build log in the run directory.",
                    )
                text = event.get("stream") or event.get("status") or ""
                for line in text.splitlines():
                    if line.strip():
                        recent.append(line.rstrip())
                        on_line(line.rstrip())

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None:
        repository, tag = parse_repository_tag(ref)
        layers: dict[str, tuple[int, int]] = {}
        try:
            for event in self.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if "error" in event:
                    raise EngineError(str(event["error"]))
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total"):
                    layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                    done = sum(c for c, _ in layers.values())
                    total = sum(t for _, t in layers.values())
                    on_progress(f"{done / 1e6:.0f}/{total / 1e6:.0f} MB")
                elif event.get("status", "").startswith(("Digest", "Status")):
                    on_progress(event["status"])
        except (APIError, DockerException, EngineError) as exc:
            message = getattr(exc, "explanation", None) or str(exc)
            raise EngineError(f"could not pull image {ref}: {message}") from None

    # --- networks ---------------------------------------------------------------------------------

    def create_network(self, name: str, labels: Mapping[str, str]) -> str:
        with _engine_call(f"creating network {name}"):
            network = self.client.networks.create(name, driver="bridge", labels=dict(labels), check_duplicate=True)
            return str(network.id)

    def remove_network(self, name: str) -> None:
        with _gone_is_fine(f"removing network {name}"):
            self.api.remove_network(name)

    # --- containers -------------------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> str:
        api = self.api
        host_config = api.create_host_config(
            binds={src: {"bind": dst, "mode": mode} for src, (dst, mode) in spec.binds.items()} or None,
            mem_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
            memswap_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
            nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
            dns=list(spec.dns) or None,
            ulimits=[Ulimit(name=n, soft=s, hard=h) for n, (s, h) in spec.ulimits.items()] or None,
            init=spec.init or None,
            tmpfs={path: "rw" for path in spec.tmpfs} or None,
        )
        networking = api.create_networking_config(
            {spec.network: api.create_endpoint_config(aliases=list(spec.aliases) or None)}
        )
        with _engine_call(f"creating container {spec.name}"):
            created = api.create_container(
                image=spec.image,
                command=list(spec.command) if spec.command else None,
                name=spec.name,
                hostname=spec.hostname,
                environment=dict(spec.env),
                labels=dict(spec.labels),
                working_dir=spec.working_dir,
                tty=spec.tty,
                stdin_open=spec.stdin_open,
                host_config=host_config,
                networking_config=networking,
            )
            return str(created["Id"])

    def start_container(self, container_id: str) -> None:
        with _engine_call("starting a container"):
            self.api.start(container_id)

    def container_address(self, container_id: str, network: str) -> str | None:
        with _engine_call("inspecting a container"):
            info = self.api.inspect_container(container_id)
        address = (info.get("NetworkSettings", {}).get("Networks", {}).get(network) or {}).get("IPAddress")
        return address or None

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult:
        with _in_container("running a command in the container"):
            exec_id = self._exec_create(container_id, command, env)
            output = self.api.exec_start(exec_id)
            code = self._exit_code(exec_id)
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        return ExecResult(code, text)

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream:
        with _in_container("running a command in the container"):
            exec_id = self._exec_create(container_id, command, env)
            stream = self.api.exec_start(exec_id, stream=True, demux=True)

        def exit_code() -> int:
            with _engine_call("reading a command's exit code"):
                return self._exit_code(exec_id)

        return ExecStream(_demuxed(stream), exit_code)

    def _exec_create(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> str:
        created = self.api.exec_create(container_id, list(command), environment=dict(env), stdout=True, stderr=True)
        return str(created["Id"])

    def _exit_code(self, exec_id: str) -> int:
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        return int(code) if code is not None else -1

    def state(self, container_id: str) -> ContainerState:
        with _engine_call("inspecting a container"):
            state = self.api.inspect_container(container_id)["State"]
        running = bool(state.get("Running"))
        return ContainerState(
            running=running,
            exit_code=None if running else state.get("ExitCode"),
            status=str(state.get("Status", "")),
            oom_killed=bool(state.get("OOMKilled")),
        )

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str:
        with _engine_call("reading container logs"):
            data = self.api.logs(container_id, stdout=True, stderr=True, timestamps=timestamps,
                                 tail=tail if tail is not None else "all")
        return data.decode(errors="replace") if isinstance(data, bytes) else str(data)

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        # Not a generator function: the attach request must be made now, before the container
        # starts, or its first lines are lost.
        with _engine_call("attaching to the agent"):
            stream = self.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        return _demuxed(stream)

    def release(self, container_id: str) -> None:
        with _engine_call("starting the agent"):
            sock = self.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
            try:
                raw = getattr(sock, "_sock", sock)
                raw.sendall(b"go\n")
            finally:
                sock.close()

    def attach_terminal(self, container_id: str) -> int:
        # The docker CLI handles a terminal best (raw mode, resizes, stdin).
        cli = shutil.which("docker")
        if cli is None:
            raise EngineError("interactive runs need the docker command-line client on PATH",
                              hint="Install the docker CLI, or run without -i.")
        subprocess.run([cli, "start", "--attach", "--interactive", container_id], check=False)
        return self.wait(container_id)

    def wait(self, container_id: str) -> int:
        with _engine_call("waiting for the agent"):
            return int(self.api.wait(container_id)["StatusCode"])

    def stop_container(self, container_id: str, timeout: float) -> None:
        with _gone_is_fine("stopping a container"):
            self.api.stop(container_id, timeout=max(0, int(timeout)))

    def remove_container(self, container_id: str) -> None:
        # 409: its removal is already in progress
        with _gone_is_fine(f"removing container {container_id[:12]}", 409):
            self.api.remove_container(container_id, v=True, force=True)

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects:
        found = self._labelled([f"{k}={v}" if v else k for k, v in labels.items()])
        by_kind = ([o.id for o in found if o.kind == kind] for kind in ("container", "network", "volume"))
        return LabelledObjects(*by_kind)

    def remove_volume(self, name: str) -> None:
        with _gone_is_fine(f"removing volume {name}"):
            self.api.remove_volume(name, force=True)

    def disconnect(self, container_id: str, network: str) -> None:
        with _gone_is_fine(f"disconnecting a container from {network}"):
            self.api.disconnect_container_from_network(container_id, network, force=True)

    def objects_with_label(self, key: str) -> list[EngineObject]:
        return self._labelled([key])

    def _labelled(self, label_filters: list[str]) -> list[EngineObject]:
        filters = {"label": label_filters}
        with _engine_call("listing moat's engine objects"):
            found = [EngineObject("container", c["Id"], c.get("Labels") or {})
                     for c in self.api.containers(all=True, filters=filters)]
            found += [EngineObject("network", n["Name"], n.get("Labels") or {})
                      for n in self.api.networks(filters=filters)]
            found += [EngineObject("volume", v["Name"], v.get("Labels") or {})
                      for v in (self.api.volumes(filters=filters).get("Volumes") or [])]
        return found

    def images(self, repository: str) -> list[ImageInfo]:
        with _engine_call("listing images"):
            images = self.api.images(name=repository)
            used = {c.get("ImageID") for c in self.api.containers(all=True)}
        return [ImageInfo(i["Id"], tuple(i.get("RepoTags") or ()), int(i.get("Size") or 0), i["Id"] in used)
                for i in images]

    def remove_image(self, image_id: str) -> None:
        with _gone_is_fine(f"removing image {image_id[:19]}"):
            self.api.remove_image(image_id, force=False)

    def version(self) -> str:
        with _engine_call("asking the engine's version"):
            info = self.api.version()
        components = info.get("Components") or [{}]
        platform = info.get("Platform", {}).get("Name") or components[0].get("Name") or "engine"
        return f"{platform} {info.get('Version', '?')} (API {info.get('ApiVersion', '?')})"
