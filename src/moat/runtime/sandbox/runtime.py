"""The sandbox runtime: the ``Runtime`` protocol without a container engine.

A run's *network* is a private network namespace (only loopback) held open by a holder process. Its
*services* are host programs, each one process (setup, then its server) in its own namespaces inside
that network, listening on 127.0.0.1; service names resolve to 127.0.0.1 through /etc/hosts. The
*agent* runs under bubblewrap the same way: the host's files read-only, the workspace read-write at
/workspace, its own /tmp. Every process runs as the plan's identity (never as host root), in the
cgroups that enforce its limits, and is recorded under ``MOAT_HOME/sandbox/`` (``records``) before it
runs, so another moat process (``moat clean``, a detached run's supervisor) can find and end it.
Files the sandboxed processes need live in the scratch directories the plan assigned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from moat.constants import LABEL_RUN_ID
from moat.errors import EngineError, UsageError
from moat.ownership import home_id
from moat.plan.containers import ContainerSpec
from moat.plan.identity import Identity
from moat.plan.model import ImageSpec, Plan
from moat.runtime.base import (
    ContainerInfo,
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
from moat.runtime.sandbox import boxes, cgroups, hostinfo, launch, services, streams
from moat.runtime.sandbox import scratch as dirs
from moat.runtime.sandbox.procs import Proc
from moat.runtime.sandbox.records import NETWORK, Records
from moat.runtime.sandbox.starting import Starter
from moat.runtime.sandbox.terminal import Terminal

STOP_POLL = 0.02


class SandboxRuntime:
    name = "sandbox"

    def __init__(self, home: Path, identity: Identity | None = None) -> None:
        self.home = home
        # None: whoever runs moat (``moat clean`` and ``status`` only inspect and reap).
        self.identity = identity or Identity(os.getuid(), os.getgid())
        self.records = Records(home / "sandbox")
        self.cgroups = cgroups.Cgroups()
        self._own: dict[str, subprocess.Popen[bytes]] = {}  # what this process started, by id
        self._specs: dict[str, ContainerSpec] = {}  # environments (passwords) stay in memory
        self._starter = Starter(self.records, self.cgroups, self.identity)
        # Signals for a container this process has created but not started (or is starting): the run
        # hands the agent its signals from the moment its turn comes, which is just before its start.
        self._pending: dict[str, list[int]] = {}
        self._started: set[str] = set()
        self._ttys: dict[str, Terminal] = {}  # the ptys of interactive agents this process relays
        self._lock = threading.Lock()

    def _tag(self, key: str) -> str:
        return f"moat-sandbox:{home_id(self.home)}:{key}"

    def _refuse_root(self) -> None:
        if self.identity.root:
            raise EngineError("the sandbox runtime never runs a run's processes as root",
                              hint="The agent runs as the workspace's owner: give the workspace to a user"
                                   " (chown -R USER WORKSPACE), or use --runtime docker.")

    # --- the engine ------------------------------------------------------------------------------

    def ping(self) -> None:
        for program in ("bwrap", "nsenter"):
            if shutil.which(program) is None:
                raise EngineError(f"the sandbox runtime needs `{program}`, which is not installed",
                                  hint=boxes.INSTALL_HINT)
        # In a session of its own, like every process the sandbox starts: the terminal's Ctrl-C is the
        # run's to handle (a cancel), not a reason for the probe to die and say bubblewrap failed.
        probe = subprocess.run(
            ["bwrap", "--unshare-user", "--unshare-net", "--ro-bind", "/", "/", "/bin/sh", "-c", ":"],
            capture_output=True, text=True, check=False, cwd="/", start_new_session=True,
            **launch.as_identity(self.identity))
        if probe.returncode != 0:
            raise EngineError(f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}",
                              hint="Unprivileged user namespaces must be enabled "
                                   "(sysctl kernel.unprivileged_userns_clone=1), or use --runtime docker.")

    def version(self) -> str:
        out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False,
                             start_new_session=True).stdout
        return f"sandbox ({out.strip() or 'bubblewrap'})"

    def caveats(self, plan: Plan) -> list[str]:
        return hostinfo.caveats(plan, self.identity, self.cgroups)

    # --- "images": the host's own programs ----------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        return not ref.startswith("moat/run:")  # services need no image; the agent's tools are checked

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        hostinfo.check_tools(image, on_line)

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None:
        return None

    def images(self, repository: str) -> list[ImageInfo]:
        return []

    def remove_image(self, image_id: str) -> None:
        return None

    def image_config(self, ref: str) -> ImageConfig:
        """No image: what a service's data depends on here is the host's programs (a warm template
        made with one postgres is not used with another)."""
        return ImageConfig(services.programs_identity(), (), ())

    def export_path(self, container_id: str, path: str) -> Iterator[bytes]:
        """A stopped service's data directory (kept on disk: ``tmpfs`` off), as a tar named after it."""
        record = self.records.container(container_id)
        data = Path(record["scratch"]) / Path(services.DATA).name
        if path != services.DATA or not data.is_dir():
            raise EngineError(f"{record['name']} has no data directory {path} to copy out")
        yield from streams.tar_directory(data)

    # --- the run's network -------------------------------------------------------------------------

    def create_network(self, name: str, labels: Mapping[str, str], scratch: str) -> str:
        self._refuse_root()
        directory = Path(scratch)
        record: dict[str, Any] = {"kind": "network", "id": name, "labels": dict(labels), "scratch": scratch,
                                  "tag": self._tag(name), "identity": [self.identity.uid, self.identity.gid]}
        self.records.write(name, NETWORK, record)  # first: whatever follows is found from it
        try:
            dirs.create(directory, self.identity)
            with self.records.open(self.records.log(name, NETWORK)) as errors:
                holder, child = boxes.start_holder(self.identity, record["tag"], errors)
        except BaseException:
            self.records.forget_network(name)
            dirs.remove(directory, directory.parent)
            raise
        self._own[f"{NETWORK}:{name}"] = holder
        monitor = Proc.of(holder.pid)
        record.update(monitor=monitor.to_json() if monitor else None, init=child.to_json())
        self.records.write(name, NETWORK, record)
        return name

    def remove_network(self, name: str) -> None:
        for container in self.records.on_network(name):
            self.remove_container(container["id"])
        try:
            record = self.records.network(name)
        except NotFound:
            self.records.forget_network(name)
            return
        boxes.kill(record, self._own.pop(f"{NETWORK}:{name}", None))
        directory = Path(record["scratch"])
        dirs.remove(directory, directory.parent)
        self.records.forget_network(name)

    def disconnect(self, container_id: str, network: str) -> None:
        return None

    def host_gateway(self) -> str:
        raise EngineError("the sandbox reaches moat's proxy through a relay in the run's network, not a gateway")

    # --- containers ------------------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec, labels: Mapping[str, str]) -> str:
        self._refuse_root()
        network = self.records.network(spec.network)
        container_id = uuid.uuid4().hex
        trusted = Path(network["scratch"]).parent
        directory = Path(spec.scratch) if spec.scratch else Path(network["scratch"]) / spec.name
        if spec.role == "service":
            self._starter.check_service(spec)  # before anything is made: a missing program is an error
        record = {
            "kind": "container", "id": container_id, "name": spec.name, "network": spec.network, "role": spec.role,
            "service": spec.service, "labels": {**spec.labels, **labels}, "aliases": list(spec.aliases),
            "hostname": spec.hostname or spec.name, "scratch": str(directory), "trusted": str(trusted),
            "tag": self._tag(container_id), "interactive": spec.role == "agent" and (spec.tty or spec.stdin_open),
            "run": spec.labels.get(LABEL_RUN_ID) or spec.network, "cgroups": [], "monitor": None, "init": None,
            "created": time.time(),
        }
        self.records.write(spec.network, container_id, record)  # first: whatever follows is found from it
        try:
            dirs.create(directory, self.identity, trusted)
        except BaseException:
            self.records.forget(spec.network, container_id)
            raise
        self._specs[container_id] = spec
        return container_id

    def start_container(self, container_id: str) -> None:
        self._start(container_id)

    def _start(self, container_id: str, tty: Terminal | None = None) -> None:
        record = self.records.container(container_id)
        spec = self._specs.get(container_id)
        if spec is None:
            raise EngineError(f"{record['name']} was created by another moat process: only that one can start it")
        with self._lock:
            self._pending.setdefault(container_id, [])
        try:
            self._own[container_id] = self._starter.start(record, spec, tty=tty)
        finally:
            with self._lock:
                pending = self._pending.pop(container_id, [])
                self._started.add(container_id)
        for signum in pending:  # delivered once its command is there to receive them
            boxes.signal_when_running(record, signum)

    def release(self, container_id: str) -> None:
        self.start_container(container_id)

    def signal(self, container_id: str, signum: int) -> None:
        with self._lock:
            if container_id in self._specs and container_id not in self._started:
                self._pending.setdefault(container_id, []).append(signum)  # not started yet: held for it
                return
        tty = self._ttys.get(container_id)
        group = tty.foreground_group() if tty is not None else None
        if group is not None:  # an interactive agent: whatever runs in the foreground of its pty
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
            return
        with contextlib.suppress(NotFound):
            # Just after its start, its init may not have started the command yet: as pid 1 of its
            # namespace the init ignores the signal, and the command would never get it.
            boxes.signal_when_running(self.records.container(container_id), signum)

    def _running(self, record: Mapping[str, Any]) -> bool:
        own = self._own.get(record["id"])
        if own is not None:
            own.poll()  # reaps it once it has ended
        return boxes.running(record)

    def stop_container(self, container_id: str, timeout: float) -> None:
        try:
            record = self.records.container(container_id)
        except NotFound:
            return
        if self._running(record):
            boxes.signal_container(record, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._running(record) and time.monotonic() < deadline:
                time.sleep(STOP_POLL)
        boxes.kill(record, self._own.get(container_id))

    def remove_container(self, container_id: str) -> None:
        try:
            record = self.records.container(container_id)
        except NotFound:
            return
        boxes.kill(record, self._own.pop(container_id, None))
        for path in record.get("cgroups") or []:
            cgroups.remove(Path(path))
        dirs.remove(Path(record["scratch"]), Path(record["trusted"]))
        self.records.forget(record["network"], container_id)
        self._specs.pop(container_id, None)

    def state(self, container_id: str) -> ContainerState:
        record = self.records.container(container_id)
        if record.get("monitor") is None:
            return ContainerState(False, None, "created")
        if self._running(record):
            return ContainerState(True, None, "running")
        return ContainerState(False, self._exit_code(record), "exited",
                              oom_killed=cgroups.oom_killed(record.get("cgroups") or []))

    def _exit_code(self, record: Mapping[str, Any]) -> int:
        code = self.records.exit_code(record["network"], record["id"])
        if code is not None:
            return code
        own = self._own.get(record["id"])
        if own is not None and own.returncode is not None:
            return own.returncode if own.returncode >= 0 else 128 - own.returncode
        return -1  # not ours, and it said nothing: its exit code is not ours to know

    def wait(self, container_id: str) -> int:
        own = self._own.get(container_id)
        if own is not None:
            own.wait()
        record = self.records.container(container_id)
        pause = STOP_POLL / 4  # its namespace's last processes go within milliseconds of bwrap
        while self._running(record):
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        return self._exit_code(record)

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        def chunks() -> Iterator[OutputChunk]:
            yield from streams.chunks(self._own[container_id])  # read after start: attach comes first

        return chunks()

    def exec_terminal(self, container_id: str, command: tuple[str, ...], user: str, workdir: str) -> int:
        # Its execs are fed through a gate on stdin (to join the run's cgroups first): a user's stdin
        # and terminal need another way in, not built yet.
        raise UsageError("moat exec and moat join work on Docker runs; a sandbox run cannot be entered yet",
                         hint="Run with --runtime docker to join it later.")

    def attach_terminal(self, container_id: str) -> int:
        """The agent on a pty of its own, relayed to moat's terminal (see ``terminal``)."""
        tty = Terminal(self.identity)
        try:
            with self._lock:
                self._ttys[container_id] = tty
            self._start(container_id, tty)
        finally:
            tty.close_slave()  # the agent holds its own end now
        record = self.records.container(container_id)
        tty.relay(self.records.log(record["network"], container_id))
        return self.wait(container_id)

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str:
        record = self.records.container(container_id)
        return streams.tail(self.records.log(record["network"], container_id), tail)

    def follow_logs(self, container_id: str, tail: int | None = None) -> Iterator[str]:
        record = self.records.container(container_id)
        return streams.follow(self.records.log(record["network"], container_id), tail,
                              lambda: self._running(record))

    def _exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]
              ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        record = self.records.container(container_id)
        if not self._running(record):
            raise ContainerNotRunning(f"{record['name']} is not running")
        holder = Proc.from_json(self.records.network(record["network"]).get("init"))
        init = Proc.from_json(record.get("init"))
        if holder is None or init is None:
            raise ContainerNotRunning(f"{record['name']} is not running")
        full = {**self._starter.exec_env(record, self._specs.get(container_id)), **env}
        process = streams.spawn_exec(holder.pid, init.pid, command, full, self.identity,
                                     record.get("cgroups") or [])
        return process, record

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult:
        process, record = self._exec(container_id, command, env)
        return streams.run_exec(process, command, lambda: self._running(record))

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream:
        return streams.stream_exec(self._exec(container_id, command, env)[0])

    def container_address(self, container_id: str, network: str) -> str | None:
        return None  # the run's network is private: the host cannot reach it

    def container_env(self, container_id: str) -> dict[str, str]:
        spec = self._specs.get(container_id)
        if spec is not None:
            return dict(spec.env)
        return self._starter.given_env(self.records.container(container_id))

    # --- everything labelled ---------------------------------------------------------------------

    def objects_with_label(self, key: str) -> list[EngineObject]:
        return [EngineObject(r["kind"], r["id"], r.get("labels", {})) for r in self.records.all()
                if key in r.get("labels", {})]

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects:
        def matches(record: Mapping[str, Any]) -> bool:
            own = record.get("labels", {})
            return all(k in own and (not v or own[k] == v) for k, v in labels.items())

        found = [r for r in self.records.all() if matches(r)]
        return LabelledObjects([r["id"] for r in found if r["kind"] == "container"],
                               [r["id"] for r in found if r["kind"] == "network"], [])

    def remove_volume(self, name: str) -> None:
        return None

    def fill_volume(self, name: str, image: str, labels: Mapping[str, str], archive: BinaryIO) -> None:
        raise EngineError("the sandbox keeps no volumes (a volume workspace needs --runtime docker)")

    def export_volume(self, name: str, image: str) -> Iterator[bytes]:
        raise EngineError("the sandbox keeps no volumes (a volume workspace needs --runtime docker)")

    def containers(self, key: str) -> list[ContainerInfo]:
        found = []
        for record in self.records.all():
            if record["kind"] != "container" or key not in record.get("labels", {}):
                continue
            try:
                status = self.state(record["id"]).status
            except NotFound:
                continue  # gone meanwhile
            found.append(ContainerInfo(record["id"], record["name"], "", status, float(record.get("created", 0)),
                                       record.get("labels", {})))
        return found
