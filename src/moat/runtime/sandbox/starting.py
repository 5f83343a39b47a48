"""Turning a container's record and spec into running processes: its view of the host, its
environment, its command (a service's script or the agent's), its limits and its output."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moat.catalog import load_catalog
from moat.catalog.model import HostRecipe
from moat.constants import AGENT_HOME as IMAGE_HOME
from moat.errors import EngineError
from moat.files import private_dir
from moat.plan.containers import ContainerSpec, Mount
from moat.plan.endpoints import SOCKETS_MOUNT
from moat.plan.identity import Identity
from moat.plan.warm import SEED_DIR
from moat.runtime.sandbox import boxes, cgroups, launch, procs, services, streams
from moat.runtime.sandbox import scratch as dirs
from moat.runtime.sandbox.procs import Proc
from moat.runtime.sandbox.records import Records
from moat.runtime.sandbox.terminal import Terminal

AGENT_HOME = "/tmp"  # noqa: S108 — the agent's own /tmp (its scratch directory)
RELAY_SOURCE = Path(__file__).resolve().parents[2] / "proxy" / "relay.py"  # standard library only


def _recipe(spec: ContainerSpec) -> tuple[HostRecipe, int]:
    service = load_catalog().service(spec.service or "")
    if service is None or service.sandbox is None:
        name = spec.service or spec.name
        raise EngineError(f"the sandbox runtime cannot run {name}: it has no host program to run it with",
                          hint=f"Use --runtime docker for {name}.")
    return service.sandbox, service.port


def hosts(names: set[str]) -> bytes:
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if names:
        text += "127.0.0.1\t" + " ".join(sorted(names)) + "\n"
    return text.encode()


def _data_fd(data: bytes) -> int:
    fd = os.memfd_create("moat-sandbox")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass(frozen=True)
class _Launch:
    view: list[str]
    command: list[str]
    env: dict[str, str]
    workdir: str
    io: boxes.Streams


class Starter:
    def __init__(self, records: Records, limits: cgroups.Cgroups, identity: Identity) -> None:
        self.records = records
        self.limits = limits
        self.identity = identity

    def check_service(self, spec: ContainerSpec) -> None:
        recipe, _ = _recipe(spec)
        for program in recipe.binaries:
            services.find_binary(program, recipe)

    def _mount_fd(self, source: str, create: bool) -> int:
        path = Path(source)
        if create:  # a directory of moat's (a host cache) that the service writes, as the identity
            private_dir(path)  # (made by the pod already when it is the agent's)
            if os.geteuid() == 0 and path.stat().st_uid != self.identity.uid:
                dirs.hand_to(path, self.identity)
        try:
            return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise EngineError(f"cannot give {source} to the run: {exc.strerror}") from None

    @staticmethod
    def _archive_fd(path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise EngineError(f"cannot give the warm template {path} to the run: {exc.strerror}") from None

    def start(self, record: dict[str, Any], spec: ContainerSpec, *, tty: Terminal | None = None
              ) -> subprocess.Popen[bytes]:
        network = self.records.network(record["network"])
        holder = Proc.from_json(network.get("init"))
        if holder is None or not procs.alive(holder):
            raise EngineError(f"the sandbox network {record['network']} is gone (its holder process ended)")
        record["cgroups"] = self.limits.create(record["run"], record["name"], spec.memory_mb, spec.cpus)
        self.records.write(record["network"], record["id"], record)
        names = {record["hostname"]}
        for other in self.records.on_network(record["network"]):
            names |= set(other.get("aliases") or [])
        with contextlib.ExitStack() as stack:
            opened: list[int] = []

            def keep(fd: int) -> int:
                stack.callback(os.close, fd)
                opened.append(fd)
                return fd

            hosts_fd = keep(_data_fd(hosts(names)))
            status = stack.enter_context(self.records.open(self.records.status(record["network"], record["id"]),
                                                          append=False))
            if spec.role in ("service", "relay"):
                log = stack.enter_context(self.records.open(self.records.log(record["network"], record["id"])))
                io = boxes.Streams(subprocess.DEVNULL, log, log)
                plan = (self._service(record, spec, hosts_fd, keep, io) if spec.role == "service"
                        else self._relay(record, spec, hosts_fd, keep, io))
            else:
                plan = self._agent(record, spec, hosts_fd, tty, keep)

            def argv(info: int, status_fd: int, block: int) -> list[str]:
                box = launch.Box(self.identity, record["tag"], record["hostname"], plan.view, plan.workdir, info,
                                 status_fd, block)
                return [*launch.enter_network(holder.pid), *box.argv(plan.command)]

            def recorded(monitor: Proc, init: Proc) -> None:
                record.update(monitor=monitor.to_json(), init=init.to_json())
                self.records.write(record["network"], record["id"], record)

            def log_tail() -> str:
                return streams.tail(self.records.log(record["network"], record["id"]), 5)

            monitor, _ = boxes.start_box(argv, identity=self.identity, env=plan.env, streams=plan.io, status=status,
                                         keep_fds=opened, cgroup_paths=record["cgroups"],
                                         recorded=recorded, log=log_tail)
        return monitor

    def _service(self, record: dict[str, Any], spec: ContainerSpec, hosts_fd: int, keep: Callable[[int], int],
                 io: boxes.Streams) -> _Launch:
        """The service's script in a view of the host read-only, its scratch directory read-write."""
        recipe, port = _recipe(spec)
        # Its mounts (a host cache) are open directories: /proc/self/fd/N reaches them whatever their
        # parents' permissions (MOAT_HOME may be root's).
        inside = {m.target: f"/proc/self/fd/{keep(self._mount_fd(m.source, m.create))}" for m in spec.mounts
                  if m.target != SEED_DIR}
        for mount in spec.mounts:
            if mount.target == SEED_DIR:
                # A warm template's archive on the script's stdin: moat's private file (root's, when
                # moat runs as root), read through the descriptor by a service that could not open it.
                io = dataclasses.replace(io, stdin=keep(self._archive_fd(Path(mount.source) / "0.tar")))
                inside[SEED_DIR] = services.SEED_ON_STDIN
        program = services.program(recipe, spec, port, inside)
        record["exec_env"] = program.exec_env
        view = launch.service_view(launch.Bind(record["scratch"], services.HOME), services.DATA, bool(spec.tmpfs),
                                   hosts_fd, [services.find_binary(p, recipe) for p in recipe.binaries])
        env = {**launch.base_env(self.identity, {"HOME": services.HOME}), **spec.env, **program.env}
        return _Launch(view, ["/bin/sh", "-c", program.script], env, services.HOME, io)

    def _relay(self, record: dict[str, Any], spec: ContainerSpec, hosts_fd: int, keep: Callable[[int], int],
               io: boxes.Streams) -> _Launch:
        """moat's relay (standard library only) run by the host's python inside the run's network, from
        a copy of its source: neither moat's files nor MOAT_HOME need be readable by the identity. The
        proxy's socket is passed open (O_PATH), and reached as /proc/self/fd/N."""
        python = self._python()
        source = keep(_data_fd(RELAY_SOURCE.read_bytes()))
        if any(m.target == SOCKETS_MOUNT for m in spec.mounts):  # the published ports': sockets made here
            binds = [self._agent_bind(m) for m in spec.mounts]
            view = launch.agent_view(launch.Bind(record["scratch"], AGENT_HOME), binds, hosts_fd, hidden=self.hidden())
            command = [python, "-I", f"/proc/self/fd/{source}", *(spec.command or ())]
            return _Launch(view, command, launch.base_env(self.identity, {"HOME": AGENT_HOME}), "/", io)
        [socket_mount] = spec.mounts
        try:
            socket_fd = keep(os.open(socket_mount.source, os.O_PATH | os.O_CLOEXEC))
        except OSError as exc:
            raise EngineError(f"moat's proxy socket {socket_mount.source} cannot be opened: {exc.strerror}") from None
        view = launch.agent_view(launch.Bind(record["scratch"], AGENT_HOME), [], hosts_fd, hidden=self.hidden())
        command = [python, "-I", f"/proc/self/fd/{source}", *(spec.command or ()), "--to", f"/proc/self/fd/{socket_fd}"]
        return _Launch(view, command, launch.base_env(self.identity, {"HOME": AGENT_HOME}), "/", io)

    def hidden(self) -> list[Path]:
        """MOAT_HOME and the credentials in the homes of the identity, of whoever runs moat and of root."""
        homes = [os.path.expanduser("~"), "/root"]
        with contextlib.suppress(KeyError):
            homes.append(pwd.getpwuid(self.identity.uid).pw_dir)
        return launch.hidden_paths(self.records.root.parent, homes, self.identity)

    def _python(self) -> str:
        """A python3 the identity can run (moat's own may live where it cannot: a venv under /root)."""
        path = launch.search_path(self.identity, os.environ.get("PATH", "/usr/bin:/bin"))
        for candidate in ("/usr/bin/python3", shutil.which("python3", path=path)):
            if candidate and launch.reachable(os.path.dirname(os.path.realpath(candidate)), self.identity):
                return candidate
        raise EngineError("the sandbox needs a python3 the agent's user can run, for its relay to moat's proxy",
                          hint="Install Debian's python3 (apt-get install python3).")

    def _agent(self, record: dict[str, Any], spec: ContainerSpec, hosts_fd: int, tty: Terminal | None,
               keep: Callable[[int], int]) -> _Launch:
        """The agent's command with the host's directories read-only, its mounts, its own /tmp; an
        interactive one on a pty of its own, made its controlling terminal in a session of its own.
        A read-only file (moat's CA) is given as a copy: its directory may be closed to the identity."""
        binds = [self._agent_bind(m) for m in spec.mounts if not (m.read_only and Path(m.source).is_file())]
        copies = [arg for m in spec.mounts if m.read_only and Path(m.source).is_file()
                  for arg in ("--ro-bind-data", str(keep(_data_fd(Path(m.source).read_bytes()))), m.target)]
        view = [*launch.agent_view(launch.Bind(record["scratch"], AGENT_HOME), binds, hosts_fd,
                                   tty.slave_path if tty is not None else None, hidden=self.hidden()), *copies]
        command = ["/bin/sh", "-c", launch.AGENT_SCRIPT, *(spec.command or ())]
        if tty is not None:  # setsid --ctty: the pty on its stdin becomes its terminal (-w: its exit code)
            command = ["setsid", "--wait", "--ctty", *command]
        env = {**launch.base_env(self.identity, {"HOME": AGENT_HOME, "TERM": os.environ.get("TERM", "dumb")}),
               **spec.env}
        io = (boxes.Streams(tty.slave, tty.slave, tty.slave) if tty is not None
              else boxes.Streams(subprocess.DEVNULL, subprocess.PIPE, subprocess.PIPE))
        return _Launch(view, command, env, spec.working_dir or "/", io)

    def _agent_bind(self, mount: Mount) -> launch.Bind:
        """A directory moat makes for the agent (its sessions, under MOAT_HOME) is bound by its path,
        which the agent's user must be able to reach: bwrap, run as that user, cannot bind an open
        descriptor (--bind-fd, /proc/self/fd/N: "Permission denied"), and a descriptor left open in the
        agent would be a handle up the host's tree, out of its view."""
        if mount.create:
            os.close(self._mount_fd(mount.source, True))  # made, and the agent's
            if not launch.reachable(mount.source, self.identity):
                raise EngineError(
                    f"the agent's user (uid {self.identity.uid}) cannot reach {mount.source}, where moat keeps"
                    " its sessions or a volume (MOAT_HOME is closed to it)",
                    hint="Give MOAT_HOME to a directory that user can reach (e.g. chmod 711 on it and its"
                         " parents), set claude.sync_logs: false, or use --runtime docker.")
        source = mount.source if os.path.isdir(mount.source) else os.path.dirname(mount.source)
        if not launch.reachable(source, self.identity):
            raise EngineError(f"the agent's user (uid {self.identity.uid}) cannot reach {mount.source}, which a mount"
                              " gives it (the sandbox binds it as that user)",
                              hint="Mount a path that user can read, or use --runtime docker.")
        target = mount.target
        if target.startswith(IMAGE_HOME + "/"):  # the image's home (~/.myapp) is the sandbox agent's own
            target = AGENT_HOME + target[len(IMAGE_HOME):]
        if not launch.mount_point_possible(target, AGENT_HOME):
            top = "/" + target.split("/")[1]
            raise EngineError(f"the sandbox shows the host's {top} read-only, and {target} does not exist in it:"
                              " nothing can be mounted there",
                              hint="Choose a target outside the host's directories (e.g. /data), or use --runtime"
                                   " docker.")
        return launch.Bind(mount.source, target, mount.read_only, mount.excluded)

    def given_env(self, record: Mapping[str, Any]) -> dict[str, str]:
        """The environment the container was started with, read back from its pid namespace's init
        (bubblewrap, which keeps it as given: a server may write over its own, as redis does)."""
        found = procs.environ(Proc.from_json(record.get("init"))) or {}
        for internal in (launch.TAG_VAR, services.SETUP_VAR):
            found.pop(internal, None)
        return found

    def exec_env(self, record: Mapping[str, Any], spec: ContainerSpec | None) -> dict[str, str]:
        """A command run in the container gets the container's environment, as with ``docker exec``."""
        own = dict(spec.env) if spec is not None else self.given_env(record)
        home = services.HOME if record.get("role") == "service" else AGENT_HOME
        return {**launch.base_env(self.identity, {"HOME": home}), **own, **(record.get("exec_env") or {})}
