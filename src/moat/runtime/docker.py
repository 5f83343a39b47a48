"""The Docker runtime: the ``Runtime`` protocol over the Docker Engine API (docker SDK).

Works with any engine speaking that API: Docker, or Podman's API socket (``DOCKER_HOST``). Every SDK
call, and every stream it returns, goes through ``_engine`` / ``_streamed``: the one place where the
SDK's exceptions become moat's (``NotFound``, ``ContainerNotRunning``, ``EngineGone``,
``EngineError``). Nothing else in moat imports the SDK.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound
from docker.errors import NotFound as SdkNotFound
from docker.types import Mount as SdkMount
from docker.types import Ulimit
from docker.utils import parse_repository_tag

from moat.constants import (
    LABEL_HOME,
    LABEL_ROLE,
    LABEL_RUN_ID,
    LABEL_VOLUME,
    LABEL_WORKSPACE_OF,
    WORKSPACE_MOUNT,
    WORKSPACE_VOLUME_PREFIX,
)
from moat.errors import EngineError
from moat.plan.containers import ContainerSpec, Mount
from moat.plan.hooks import HOOK_NAME
from moat.plan.model import ImageSpec, Plan
from moat.runtime.base import (
    ContainerInfo,
    ContainerNotRunning,
    ContainerState,
    EngineGone,
    EngineObject,
    ExecResult,
    ExecStream,
    ImageConfig,
    ImageInfo,
    LabelledObjects,
    NotFound,
    OutputChunk,
    ProgramNotFound,
    ProgressCallback,
)

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Builds run apt-get, pip and npm: the host network reaches what the host reaches, even where the
# engine's bridge has no outside route (e.g. dockerd --iptables=false).
BUILD_NETWORK = os.environ.get("MOAT_BUILD_NETWORK", "host")
RELEASE_TIMEOUT = 10.0  # seconds to deliver a held agent's go line
EXEC_TIMEOUT = 120.0  # seconds of silence after which a command run in a container counts as lost

HOW_TO_START = (
    "Start Docker (e.g. `sudo systemctl start docker`, or open Docker Desktop), point DOCKER_HOST at a"
    " running engine or Podman socket (`podman system service`), or, in moat's own repository, run"
    " `make engine`."
)
_GONE_HINT = ("The container engine stopped answering (was it stopped or restarted?). Once it answers again,"
              " `moat clean` removes what this run left.")

T = TypeVar("T")


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def answers(timeout: float) -> bool:
    """Whether an engine answers a ping within ``timeout`` seconds."""
    try:
        docker.from_env(timeout=timeout).ping()
    except Exception as exc:
        if _translate(exc, "ping") is None:
            raise
        return False
    return True


def _explanation(exc: APIError) -> str:
    text = exc.explanation or str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def _failed_hook(recent: list[str]) -> str | None:
    """The build hook whose step failed (its script is named ``moat-hook:<key>``), if one did."""
    steps = [line for line in recent if line.startswith("Step ")]
    if steps and HOOK_NAME in steps[-1]:
        return steps[-1].rsplit(HOOK_NAME, 1)[1].split('"', 1)[0]
    return None


def _translate(exc: BaseException, action: str) -> EngineError | None:
    """The moat error for an SDK (or transport) failure; None for anything else."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, SdkNotFound | ImageNotFound):
        return NotFound(f"{action} failed: {_explanation(exc)}")
    if isinstance(exc, APIError):
        explanation = _explanation(exc)
        # 409 when it had stopped; a 500 ("…is not running: Exited (2) …") when it stopped while the
        # engine set an exec up in it.
        if "is not running" in explanation and (exc.status_code == 409 or (exc.status_code or 0) >= 500):
            return ContainerNotRunning(f"{action} failed: {explanation}")
        return EngineError(f"{action} failed: {explanation}")
    if isinstance(exc, requests.exceptions.Timeout | socket.timeout):
        return EngineGone(f"{action} failed: the container engine at {engine_address()} did not answer in time",
                          hint=_GONE_HINT)
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
                  | ConnectionError):
        return EngineGone(f"{action} failed: the container engine at {engine_address()} stopped answering"
                          f" ({type(exc).__name__})", hint=_GONE_HINT)
    if isinstance(exc, DockerException | requests.exceptions.RequestException | OSError):
        return EngineError(f"{action} failed: {exc}", hint=HOW_TO_START)
    return None


@contextmanager
def _engine(action: str) -> Iterator[None]:
    """Translate whatever the SDK raises into one of moat's engine errors that says what moat was doing."""
    try:
        yield
    except Exception as exc:
        translated = _translate(exc, action)
        if translated is None:
            raise
        if translated is exc:
            raise
        raise translated from exc


def _streamed(items: Iterator[T], action: str) -> Iterator[T]:
    """An SDK stream whose reading fails only with moat's errors (a dockerd restart mid-run says so)."""
    with _engine(action):
        yield from items


@contextmanager
def _gone_is_fine(action: str) -> Iterator[None]:
    """For removals: an object that is already gone (or going) is what we wanted."""
    try:
        with _engine(action):
            yield
    except NotFound:
        return
    except EngineError as exc:
        if isinstance(exc.__cause__, APIError) and exc.__cause__.status_code == 409 \
                and "in progress" in _explanation(exc.__cause__):
            return  # its removal is already under way
        raise


def _demuxed(stream: Iterator[tuple[bytes | None, bytes | None]]) -> Iterator[OutputChunk]:
    for out, err in stream:
        if out:
            yield OutputChunk("stdout", out)
        if err:
            yield OutputChunk("stderr", err)


def _read_multiplexed(sock: socket.socket, timeout: float) -> bytes:
    """An exec's whole output (stdout and stderr frames, in order), from its raw stream socket."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        chunk = sock.recv(65536)  # socket.timeout when the engine goes silent: translated above
        if not chunk:
            break
        data += chunk
    out, at = bytearray(), 0
    while at + 8 <= len(data):  # frames: stream (1 byte), 3 bytes of 0, size (4 bytes, big-endian)
        size = int.from_bytes(data[at + 4:at + 8], "big")
        out += data[at + 8:at + 8 + size]
        at += 8 + size
    return bytes(out)


def _missing_program(command: tuple[str, ...], code: int, output: str) -> ProgramNotFound | None:
    """Docker and Podman both say so in the exec's output, with exit 126 or 127."""
    lowered = output.lower()
    if code in (126, 127) and ("executable file not found" in lowered
                               or ("not found in $path" in lowered)
                               or ("no such file or directory" in lowered and "exec" in lowered)):
        return ProgramNotFound(command[0], output.strip().splitlines()[-1] if output.strip() else "")
    return None


def _namespace_mode(network: str) -> bool:
    """A network mode rather than a network to attach to: ``none`` or ``container:<name>``."""
    return network == "none" or network.startswith("container:")


def _created(text: str | int | None) -> float:
    if isinstance(text, int):
        return float(text)
    try:
        return datetime.fromisoformat(str(text)[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


class DockerRuntime:
    name = "docker"

    def __init__(self, client: Any | None = None) -> None:
        if client is None:
            try:
                client = docker.from_env(max_pool_size=32)
            except Exception as exc:
                if _translate(exc, "connecting") is None:
                    raise
                raise EngineError(f"no container engine answers at {engine_address()}: {exc}",
                                  hint=HOW_TO_START) from None
        self.client = client
        self.api = client.api

    def _call(self, action: str, call: Callable[[], T]) -> T:
        with _engine(action):
            return call()

    # --- the engine ------------------------------------------------------------------------------

    def ping(self) -> None:
        try:
            self.api.ping()
        except Exception as exc:
            if _translate(exc, "ping") is None:
                raise
            raise EngineError(f"no container engine answers at {engine_address()}: {exc}",
                              hint=HOW_TO_START) from None

    def version(self) -> str:
        info = self._call("asking the engine's version", self.api.version)
        components = info.get("Components") or [{}]
        platform = info.get("Platform", {}).get("Name") or components[0].get("Name") or "engine"
        return f"{platform} {info.get('Version', '?')} (API {info.get('ApiVersion', '?')})"

    def caveats(self, plan: Plan) -> list[str]:
        return []  # it runs each service's own image, with every limit enforced

    # --- images ----------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        try:
            self._call(f"inspecting image {ref}", lambda: self.api.inspect_image(ref))
        except NotFound:
            return False
        return True

    def image_config(self, ref: str) -> ImageConfig:
        info = self._call(f"inspecting image {ref}", lambda: self.api.inspect_image(ref))
        config = info.get("Config") or {}
        return ImageConfig(str(info["Id"]), tuple(config.get("Entrypoint") or ()), tuple(config.get("Cmd") or ()))

    def export_path(self, container_id: str, path: str) -> Iterator[bytes]:
        stream, _stat = self._in_container(f"copying {path} out of a container",
                                           lambda: self.api.get_archive(container_id, path))
        yield from _streamed(stream, f"copying {path} out of a container")

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        tag = image.tag
        recent: list[str] = []
        context = _build_context(image)
        events = self._call(f"building image {tag}", lambda: self.api.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True,
            labels=dict(labels), network_mode=BUILD_NETWORK, nocache=no_cache))
        for event in _streamed(events, f"building image {tag}"):
            if "error" in event:
                detail = event.get("errorDetail", {}).get("message") or event["error"]
                tail = "\n".join(f"    {line}" for line in recent[-15:])
                hook = _failed_hook(recent)
                raise EngineError(
                    f"building the agent image {tag} failed: {detail.strip()}\n  last build output:\n{tail}",
                    hint=f"Fix hooks.{hook} in moat.yaml (its output is above)." if hook else
                    "Check the dependencies in moat.yaml (a pip:/npm: package name or version?)"
                    " and the build log in the run directory.",
                )
            text = event.get("stream") or event.get("status") or ""
            for line in text.splitlines():
                if line.strip():
                    recent.append(line.rstrip())
                    del recent[:-15]
                    on_line(line.rstrip())

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None:
        repository, tag = parse_repository_tag(ref)
        layers: dict[str, tuple[int, int]] = {}
        action = f"pulling image {ref}"
        try:
            events = self._call(action, lambda: self.api.pull(repository, tag=tag or "latest", stream=True,
                                                              decode=True))
            for event in _streamed(events, action):
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
        except EngineGone:
            raise
        except EngineError as exc:
            message = exc.message.removeprefix(f"{action} failed: ")
            raise EngineError(f"could not pull image {ref}: {message}") from None

    def push_image(self, local: str, remote: str, on_line: ProgressCallback, force: bool = False) -> bool:
        """``local`` into a registry as ``remote`` (a Kubernetes run's image); False when the registry
        has that tag already (tags are content hashes: the same tag is the same image, not pushed again),
        unless ``force`` (``--rebuild``: the same inputs built afresh)."""
        if not force:
            with contextlib.suppress(EngineError):
                self._call(f"looking up {remote} in its registry", lambda: self.api.inspect_distribution(remote))
                return False
        repository, tag = parse_repository_tag(remote)
        self._call(f"tagging {local} as {remote}", lambda: self.api.tag(local, repository, tag=tag))
        action = f"pushing {remote}"
        try:
            events = self._call(action, lambda: self.api.push(repository, tag=tag, stream=True, decode=True))
            for event in _streamed(events, action):
                if "error" in event:
                    raise EngineError(str(event.get("errorDetail", {}).get("message") or event["error"]))
                if event.get("status") and not event.get("progressDetail"):
                    on_line(f"{event.get('id', '')} {event['status']}".strip())
        except EngineGone:
            raise
        except EngineError as exc:
            registry = repository.split("/", 1)[0]
            raise EngineError(f"the registry refused {remote}: {exc.message.removeprefix(f'{action} failed: ')}",
                              hint=f"Log in to it (docker login {registry}) and check kubernetes.registry in"
                                   " MOAT_HOME/config.yaml.") from None
        finally:
            with contextlib.suppress(EngineError):  # the registry's name for it is the registry's business
                self._call(f"untagging {remote}", lambda: self.api.remove_image(remote, noprune=True))
        return True

    def images(self, repository: str) -> list[ImageInfo]:
        def listing() -> tuple[list[dict[str, Any]], set[str]]:
            return self.api.images(name=repository), {c.get("ImageID") for c in self.api.containers(all=True)}

        images, used = self._call("listing images", listing)
        return [ImageInfo(i["Id"], tuple(i.get("RepoTags") or ()), int(i.get("Size") or 0), i["Id"] in used,
                          dict(i.get("Labels") or {}), _created(i.get("Created"))) for i in images]

    def remove_image(self, image_id: str) -> None:
        with _gone_is_fine(f"removing image {image_id[:19]}"):
            self.api.remove_image(image_id, force=False)

    # --- networks ---------------------------------------------------------------------------------

    def create_network(self, name: str, labels: Mapping[str, str], scratch: str) -> str:
        network = self._call(f"creating network {name}", lambda: self.client.networks.create(
            name, driver="bridge", labels=dict(labels), check_duplicate=True))
        return str(network.id)

    def host_gateway(self) -> str:
        """The host's address that ``host-gateway`` in a container's hosts file stands for: the
        gateway of the engine's default bridge (unless dockerd was given another host-gateway-ip)."""
        def gateway() -> str:
            info = self.api.inspect_network("bridge")
            for config in (info.get("IPAM") or {}).get("Config") or []:
                address = str(config.get("Gateway") or "")
                if address and ":" not in address:
                    return address
            return ""

        address = self._call("looking up the host gateway", gateway)
        if not address:
            raise EngineError("Docker's default bridge network has no IPv4 gateway: the agent could not reach"
                              " moat's proxy", hint="Start dockerd with its default bridge (docker0).")
        return address

    def remove_network(self, name: str) -> None:
        with _gone_is_fine(f"removing network {name}"):
            self.api.remove_network(name)

    def disconnect(self, container_id: str, network: str) -> None:
        with _gone_is_fine(f"disconnecting a container from {network}"):
            self.api.disconnect_container_from_network(container_id, network, force=True)

    # --- containers -------------------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec, labels: Mapping[str, str]) -> str:
        api = self.api
        for mount in spec.mounts:
            if mount.volume:
                self._ensure_volume(mount, spec, labels)

        def create() -> str:
            host_config = api.create_host_config(
                # Mounts, not binds: a path with ':' in it is a path, not a separator.
                mounts=_sdk_mounts(spec) or None,
                mem_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
                memswap_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
                dns=list(spec.dns) or None,
                ulimits=[Ulimit(name=n, soft=s, hard=h) for n, (s, h) in spec.ulimits.items()] or None,
                init=spec.init or None,
                tmpfs=_tmpfs(spec) or None,
                cap_drop=list(spec.cap_drop) or None,
                group_add=[str(g) for g in spec.groups] or None,
                security_opt=["no-new-privileges"] if spec.no_new_privileges else None,
                extra_hosts=dict(spec.extra_hosts) or None,
                # A pod's holder has no network ("none"); the others join its namespace ("container:…").
                network_mode=spec.network if _namespace_mode(spec.network) else None,
            )
            networking = None if _namespace_mode(spec.network) else api.create_networking_config(
                {spec.network: api.create_endpoint_config(aliases=list(spec.aliases) or None)})
            created = api.create_container(
                image=spec.image,
                command=list(spec.command) if spec.command else None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                name=spec.name,
                hostname=spec.hostname,
                user=spec.user or "",
                environment=dict(spec.env),
                labels={**spec.labels, **labels},
                working_dir=spec.working_dir,
                tty=spec.tty,
                stdin_open=spec.stdin_open,
                host_config=host_config,
                networking_config=networking,
            )
            return str(created["Id"])

        return self._call(f"creating container {spec.name}", create)

    def _ensure_volume(self, mount: Mount, spec: ContainerSpec, labels: Mapping[str, str]) -> None:
        """A named volume the run keeps (volumes' type: volume): made on first use, labelled as moat's
        but of no run (a run's clean-up leaves it), its root given to the agent's user. The engine makes
        a new volume's root root's; a short container of the agent's own image (no network, no other
        mount) hands it over, once."""
        api = self.api
        try:
            found = self._call(f"looking up volume {mount.source}", lambda: api.inspect_volume(mount.source))
        except NotFound:
            found = None
        if found is not None:
            labels_found = found.get("Labels") or {}
            home = {**spec.labels, **labels}.get(LABEL_HOME)
            if labels_found.get(LABEL_VOLUME) != mount.volume or labels_found.get(LABEL_HOME) != home:
                raise EngineError(f"the engine's volume {mount.source} is not this run's {mount.volume} (another"
                                  " name's, another MOAT_HOME's, or not moat's): it is not used",
                                  hint="Rename the volume or the run (name:), or remove that volume if it is"
                                       " yours to lose.")
            return
        volume_labels = {LABEL_VOLUME: mount.volume,
                         **{k: v for k, v in {**spec.labels, **labels}.items() if k == LABEL_HOME}}
        self._call(f"creating volume {mount.source}", lambda: api.create_volume(mount.source, labels=volume_labels))
        if mount.owner is None or mount.owner == (0, 0):
            return
        uid, gid = mount.owner

        def hand_over() -> None:
            helper = api.create_container(
                image=spec.image, entrypoint=["chown", f"{uid}:{gid}", "/volume"], user="0",
                labels={**spec.labels, **labels, LABEL_ROLE: "volume-setup"}, network_disabled=True,
                host_config=api.create_host_config(
                    mounts=[SdkMount("/volume", mount.source, type="volume")], network_mode="none"))
            try:
                api.start(helper)
                code = api.wait(helper, timeout=60).get("StatusCode", 1)
                if code != 0:
                    output = api.logs(helper).decode(errors="replace").strip()[-500:]
                    raise EngineError(f"could not give volume {mount.source} to uid {uid}: {output or code}",
                                      hint="Its image needs chown; or remove the volume (moat volumes rm).")
            finally:
                api.remove_container(helper, force=True)

        try:
            self._call(f"handing volume {mount.source} to the agent's user", hand_over)
        except BaseException:
            with _gone_is_fine(f"removing volume {mount.source}"):
                api.remove_volume(mount.source, force=True)  # half-made: the next run tries again
            raise

    def fill_volume(self, name: str, image: str, labels: Mapping[str, str], archive: BinaryIO) -> None:
        """A new volume ``name`` with ``archive`` (a tar) unpacked at its root: through a container of
        ``image`` that is created, never started (the engine unpacks into its mounts); the volume's
        root takes the image's /workspace's owner (the engine's copy-up), the files the tar's."""
        api = self.api
        self._call(f"creating volume {name}", lambda: api.create_volume(name, labels=dict(labels)))

        def fill() -> None:
            helper = api.create_container(  # the run's (its id): a moat killed meanwhile leaves it to `moat clean`
                image=image, entrypoint=["true"],
                labels={**labels, LABEL_RUN_ID: labels.get(LABEL_WORKSPACE_OF, ""), LABEL_ROLE: "workspace-copy"},
                network_disabled=True, host_config=api.create_host_config(
                    mounts=[SdkMount(WORKSPACE_MOUNT, name, type="volume")], network_mode="none"))
            try:
                if not api.put_archive(helper, WORKSPACE_MOUNT, archive):
                    raise EngineError(f"the engine did not unpack the workspace into volume {name}")
            finally:
                api.remove_container(helper, force=True)

        self._call(f"copying the workspace into volume {name}", fill)

    def export_volume(self, name: str, image: str) -> Iterator[bytes]:
        """The volume's contents, as a tar whose top directory is ``workspace``."""
        api = self.api

        def open_archive() -> tuple[str, Iterator[bytes]]:
            helper = api.create_container(
                image=image, entrypoint=["true"], network_disabled=True,
                labels={LABEL_RUN_ID: name.removeprefix(WORKSPACE_VOLUME_PREFIX), LABEL_ROLE: "workspace-export"},
                host_config=api.create_host_config(mounts=[SdkMount(WORKSPACE_MOUNT, name, type="volume")],
                                                   network_mode="none"))
            try:
                stream, _ = api.get_archive(helper, WORKSPACE_MOUNT)
            except BaseException:
                api.remove_container(helper, force=True)
                raise
            return helper, stream

        try:
            self._call(f"looking up volume {name}", lambda: api.inspect_volume(name))
        except NotFound:
            raise EngineError(f"volume {name} is gone: the run's workspace is not there any more") from None
        helper, stream = self._call(f"reading volume {name}", open_archive)
        try:
            yield from stream
        finally:
            with _gone_is_fine("removing a helper container"):
                api.remove_container(helper, force=True)

    def start_container(self, container_id: str) -> None:
        self._call("starting a container", lambda: self.api.start(container_id))

    def release(self, container_id: str) -> None:
        def write_go() -> None:
            sock = self.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
            try:
                raw = getattr(sock, "_sock", sock)
                raw.settimeout(RELEASE_TIMEOUT)  # a container gone meanwhile must not hang the run
                raw.sendall(b"go\n")
            finally:
                sock.close()

        self._call("starting the agent", write_go)

    def signal(self, container_id: str, signum: int) -> None:
        try:
            self._call("signalling a container", lambda: self.api.kill(container_id, signal=signum))
        except (NotFound, ContainerNotRunning):
            return

    def stop_container(self, container_id: str, timeout: float) -> None:
        with _gone_is_fine("stopping a container"):
            self.api.stop(container_id, timeout=max(0, int(timeout)))

    def remove_container(self, container_id: str) -> None:
        with _gone_is_fine(f"removing container {container_id[:12]}"):
            self.api.remove_container(container_id, v=True, force=True)

    def state(self, container_id: str) -> ContainerState:
        state = self._call("inspecting a container", lambda: self.api.inspect_container(container_id))["State"]
        running = bool(state.get("Running"))
        return ContainerState(
            running=running,
            exit_code=None if running else state.get("ExitCode"),
            status=str(state.get("Status", "")),
            oom_killed=bool(state.get("OOMKilled")),
        )

    def wait(self, container_id: str) -> int:
        return int(self._call("waiting for the agent", lambda: self.api.wait(container_id, timeout=None))
                   ["StatusCode"])

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        # The attach request is made now, before the container starts, or its first lines are lost;
        # only the reading is lazy.
        stream = self._call("attaching to the agent", lambda: self.api.attach(
            container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True))
        return _streamed(_demuxed(stream), "reading the agent's output")

    def attach_terminal(self, container_id: str) -> int:
        # The docker CLI handles a terminal best (raw mode, resizes, stdin).
        cli = shutil.which("docker")
        if cli is None:
            raise EngineError("interactive runs need the docker command-line client on PATH",
                              hint="Install the docker CLI, or run without -i.")
        # On a terminal the CLI puts it in raw mode: Ctrl-C is a byte for the agent, not a signal.
        # Without one, the CLI would pass on the signals its process group gets, as moat does: it
        # gets a session of its own, so that the agent hears each signal once.
        subprocess.run([cli, "start", "--attach", "--interactive", container_id], check=False,
                       start_new_session=not sys.stdin.isatty())
        return self.wait(container_id)

    def exec_terminal(self, container_id: str, command: tuple[str, ...], user: str, workdir: str) -> int:
        cli = shutil.which("docker")
        if cli is None:
            raise EngineError("moat exec and moat join need the docker command-line client on PATH",
                              hint="Install the docker CLI (Debian: docker.io or docker-cli).")
        if self.state(container_id).running is False:
            raise ContainerNotRunning("the run's agent container is not running")
        terminal = sys.stdin.isatty() and sys.stdout.isatty()
        # The CLI relays stdin and a terminal (raw mode, resizes) best; it passes the exit code through.
        return subprocess.run([cli, "exec", "--interactive", *(["--tty"] if terminal else []), "--user", user,
                               "--workdir", workdir, container_id, *command], check=False).returncode

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str:
        data = self._call("reading container logs", lambda: self.api.logs(
            container_id, stdout=True, stderr=True, timestamps=timestamps, tail=tail if tail is not None else "all"))
        return data.decode(errors="replace") if isinstance(data, bytes) else str(data)

    def follow_logs(self, container_id: str, tail: int | None = None) -> Iterator[str]:
        stream = self._call("following container logs", lambda: self.api.logs(
            container_id, stream=True, follow=True, timestamps=True, tail=tail if tail is not None else "all"))
        pending = b""
        for chunk in _streamed(stream, "following container logs"):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            yield from (line.decode(errors="replace") for line in lines)
        if pending:
            yield pending.decode(errors="replace")

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult:
        def run() -> tuple[int, str]:
            exec_id = self._exec_create(container_id, command, env)
            # The SDK reads an exec's output with no timeout at all: an engine that stops answering
            # would hold the caller forever. Read the raw socket with a deadline instead.
            sock = self.api.exec_start(exec_id, socket=True)
            try:
                text = _read_multiplexed(getattr(sock, "_sock", sock), EXEC_TIMEOUT).decode(errors="replace")
            finally:
                sock.close()
            return self._exit_code(exec_id), text

        code, text = self._in_container("running a command in the container", run)
        missing = _missing_program(command, code, text)
        if missing is not None:
            raise missing
        return ExecResult(code, text)

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream:
        def start() -> tuple[str, Any]:
            exec_id = self._exec_create(container_id, command, env)
            return exec_id, self.api.exec_start(exec_id, stream=True, demux=True)

        exec_id, stream = self._in_container("running a command in the container", start)

        def exit_code() -> int:
            return self._call("reading a command's exit code", lambda: self._exit_code(exec_id))

        return ExecStream(_streamed(_demuxed(stream), "reading a command's output"), exit_code)

    def _in_container(self, action: str, call: Callable[[], T]) -> T:
        """For operations inside a container: one that has stopped (or gone) says so as such."""
        try:
            return self._call(action, call)
        except NotFound as exc:
            raise ContainerNotRunning(f"the container is gone: {exc.message}") from None
        except EngineError as exc:
            if isinstance(exc.__cause__, APIError) and exc.__cause__.status_code == 409:
                raise ContainerNotRunning(f"the container is not running: {exc.message}") from None
            raise

    def _exec_create(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> str:
        created = self.api.exec_create(container_id, list(command), environment=dict(env), stdout=True, stderr=True)
        return str(created["Id"])

    def _exit_code(self, exec_id: str) -> int:
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        return int(code) if code is not None else -1

    def container_address(self, container_id: str, network: str) -> str | None:
        info = self._call("inspecting a container", lambda: self.api.inspect_container(container_id))
        address = (info.get("NetworkSettings", {}).get("Networks", {}).get(network) or {}).get("IPAddress")
        return address or None

    def container_env(self, container_id: str) -> dict[str, str]:
        info = self._call("inspecting a container", lambda: self.api.inspect_container(container_id))
        pairs = (item.partition("=") for item in (info.get("Config", {}).get("Env") or []))
        return {key: value for key, _, value in pairs}

    # --- everything labelled ----------------------------------------------------------------------

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects:
        found = self._labelled([f"{k}={v}" if v else k for k, v in labels.items()])
        by_kind = ([o.id for o in found if o.kind == kind] for kind in ("container", "network", "volume"))
        return LabelledObjects(*by_kind)

    def objects_with_label(self, key: str) -> list[EngineObject]:
        return self._labelled([key])

    def _labelled(self, label_filters: list[str]) -> list[EngineObject]:
        filters = {"label": label_filters}

        def listing() -> list[EngineObject]:
            found = [EngineObject("container", c["Id"], c.get("Labels") or {})
                     for c in self.api.containers(all=True, filters=filters)]
            found += [EngineObject("network", n["Name"], n.get("Labels") or {})
                      for n in self.api.networks(filters=filters)]
            found += [EngineObject("volume", v["Name"], v.get("Labels") or {})
                      for v in (self.api.volumes(filters=filters).get("Volumes") or [])]
            return found

        return self._call("listing moat's engine objects", listing)

    def remove_volume(self, name: str) -> None:
        with _gone_is_fine(f"removing volume {name}"):
            self.api.remove_volume(name, force=True)

    def containers(self, key: str) -> list[ContainerInfo]:
        listing = self._call("listing containers", lambda: self.api.containers(all=True, filters={"label": [key]}))
        return [ContainerInfo(c["Id"], (c.get("Names") or ["/"])[0].lstrip("/"), str(c.get("Image", "")),
                              str(c.get("State", "")), float(c.get("Created") or 0), dict(c.get("Labels") or {}))
                for c in listing]


# An excluded path's in-memory directory: the agent's (its user is not root; a mode alone is not kept on
# a tmpfs below a bind, measured on Docker 20.10), and its programs may run (node_modules/.bin): runc's
# default for tmpfs is noexec.


def _sdk_mounts(spec: ContainerSpec) -> list[SdkMount]:
    return [SdkMount(m.target, m.source, type="volume" if m.volume or m.workspace_copy else "bind",
                     read_only=m.read_only) for m in spec.mounts]


def _tmpfs(spec: ContainerSpec) -> dict[str, str]:
    """The container's own tmpfs (a service's data), then the excluded paths' (the engine sorts every
    mount by depth: an overlay comes after the bind it hides part of)."""
    found = {path: "rw" for path in spec.tmpfs}
    for m in spec.mounts:
        uid, gid = m.owner or (0, 0)
        for excluded in m.excluded:
            found[f"{m.target.rstrip('/')}/{excluded}"] = f"rw,exec,nosuid,nodev,mode=0755,uid={uid},gid={gid}"
    return found


def _build_context(image: ImageSpec) -> io.BytesIO:
    """The Dockerfile and the files it COPYs, as the tar the engine's build API takes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {name: text.encode() for name, text in {"Dockerfile": image.dockerfile, **image.context}.items()}
        for name, data in {**files, **image.fetched}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer
