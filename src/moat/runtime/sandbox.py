"""The sandbox runtime: the ``Runtime`` protocol without a container engine.

A run's *network* is a private network namespace (only loopback, brought up by bubblewrap) held open
by a tiny holder process inside a new user namespace. *Services* are host programs started inside
that namespace (``nsenter``), listening on 127.0.0.1 at their usual ports; their names resolve to
127.0.0.1 through a hosts file. The *agent* runs under bubblewrap in new user, pid, ipc and uts
namespaces inside the same network: the host's files read-only, the workspace read-write at
/workspace, a private /tmp. Everything is recorded under ``MOAT_HOME/sandbox/<network>/`` so that
another moat process (``moat clean``, a detached run's supervisor) can find and remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from moat.catalog import load_catalog
from moat.constants import LABEL_ROLE, LABEL_RUN_ID, LABEL_SERVICE, ROLE_AGENT, WORKSPACE_MOUNT
from moat.errors import EngineError
from moat.files import private_dir, write_private
from moat.ownership import process_start
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
from moat.runtime.sandbox_services import find_binary, prepare

STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
# Top-level host entries the agent does not get read-only: they are replaced or private.
_NOT_SHARED = {"proc", "dev", "tmp", "run", "sys", "workspace", "lost+found"}
INSTALL_HINT = "Install Debian's bubblewrap (sudo apt-get install bubblewrap util-linux), or use --runtime docker."


def _alive(record: Mapping[str, Any]) -> bool:
    pid = record.get("pid")
    return pid is not None and process_start(int(pid)) == record.get("start_time")


def _signal_group(record: Mapping[str, Any], signum: int) -> None:
    pid = record.get("pid")
    if pid and _alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signum)


class SandboxRuntime:
    name = "sandbox"
    writes_as_root = False
    can_hold = False  # starting a sandbox takes milliseconds

    def __init__(self, home: Path, uid: int | None = None, gid: int | None = None) -> None:
        self.root = home / "sandbox"
        self.runs = home / "runs"
        # The uid/gid processes have inside the run's user namespace: never 0 (postgres refuses root).
        self.uid = uid if uid else (os.getuid() or 1000)
        self.gid = gid if gid else (os.getgid() or 1000)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._hosts_lock = threading.Lock()
        self._private: dict[str, dict[str, Any]] = {}  # per container: what must never reach the disk

    # --- records -------------------------------------------------------------------------------------

    def _dir(self, network: str) -> Path:
        return private_dir(self.root / network)

    def _write(self, network: str, key: str, record: dict[str, Any]) -> None:
        write_private(self._dir(network) / f"{key}.json", json.dumps(record, indent=2) + "\n")

    def _records(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.root.glob("*/*.json")) if self.root.is_dir() else []:
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def _container(self, container_id: str) -> dict[str, Any]:
        for record in self._records():
            if record.get("kind") == "container" and record["id"] == container_id:
                return record
        raise ContainerNotRunning(f"no sandbox process {container_id}")

    def _network(self, name: str) -> dict[str, Any]:
        path = self.root / name / "network.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            raise EngineError(f"the sandbox network {name} does not exist") from None
        return record

    def _enter(self, network: str) -> list[str]:
        """The prefix that runs a command inside the run's user and network namespaces."""
        holder = self._network(network)
        if not _alive(holder):
            raise EngineError(f"the sandbox network {network} is gone (its holder process ended)")
        return ["nsenter", f"--target={holder['pid']}", "--user", "--net", "--preserve-credentials", "--"]

    # --- engine --------------------------------------------------------------------------------------

    def ping(self) -> None:
        for program in ("bwrap", "nsenter"):
            if shutil.which(program) is None:
                raise EngineError(f"the sandbox runtime needs `{program}`, which is not installed",
                                  hint=INSTALL_HINT)
        probe = subprocess.run(["bwrap", "--unshare-user", "--unshare-net", "--ro-bind", "/", "/", "true"],
                               capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            raise EngineError(f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}",
                              hint="Unprivileged user namespaces must be enabled "
                                   "(sysctl kernel.unprivileged_userns_clone=1), or use --runtime docker.")

    def version(self) -> str:
        out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False).stdout
        return f"sandbox ({out.strip() or 'bubblewrap'})"

    # --- "images": the host's own programs -------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        return not ref.startswith("moat/run:")  # services need no image; the agent's tools are checked

    def build_image(self, image: ImageSpec, labels: Mapping[str, str], on_line: ProgressCallback,
                    no_cache: bool = False) -> None:
        """No image is built: every declared runtime and tool must already be on the host."""
        from moat.catalog.deps import parse_dependency  # noqa: PLC0415 — a cycle otherwise

        catalog = load_catalog()
        missing = []
        for spec in image.dependencies:
            dep = parse_dependency(spec, catalog)
            if dep.manager:
                raise EngineError(f"the sandbox runtime cannot install packages ({spec})",
                                  hint="Install it on the host yourself and remove it from moat.yaml, "
                                       "or use --runtime docker.")
            entry: Any = catalog.get(dep.name)
            program = getattr(entry, "binary", None) or dep.name
            package = getattr(entry, "apt", None) or getattr(entry, "package", dep.name)
            if shutil.which(program) is None:
                missing.append(f"`{program}` (Debian package {package})")
            else:
                on_line(f"{dep.spec}: {shutil.which(program)}")
        if missing:
            packages = " ".join(m.split("package ")[1].rstrip(")") for m in missing)
            raise EngineError(f"the sandbox runtime uses the host's tools, and these are missing: {', '.join(missing)}",
                              hint=f"Install them (sudo apt-get install {packages}), or use --runtime docker.")

    def pull_image(self, ref: str, on_progress: ProgressCallback) -> None:
        return None

    def images(self, repository: str) -> list[ImageInfo]:
        return []

    def remove_image(self, image_id: str) -> None:
        return None

    # --- networks: a holder process in new user + network namespaces -------------------------------------

    def create_network(self, name: str, labels: Mapping[str, str]) -> str:
        read, write = os.pipe()
        holder = subprocess.Popen(
            ["bwrap", "--unshare-user", "--uid", str(self.uid), "--gid", str(self.gid), "--unshare-net",
             "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--info-fd", str(write), "--",
             "sleep", "infinity"],
            pass_fds=(write,), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.close(write)
        try:
            with os.fdopen(read) as info:
                text = info.read()
        except BaseException:  # interrupted before it is recorded: nothing else could find it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
            raise
        if not text:
            error = holder.stderr.read().decode(errors="replace") if holder.stderr else ""
            raise EngineError(f"could not create the sandbox network: {error.strip()}", hint=INSTALL_HINT)
        # nsenter joins bwrap's child (the sleep): it is the process inside the new namespaces.
        child = int(json.loads(text)["child-pid"])
        self._procs[f"network:{name}"] = holder
        write_private(self._dir(name) / "hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
        self._write(name, "network", {
            "kind": "network", "id": name, "labels": dict(labels),
            "pid": child, "start_time": process_start(child),
            "bwrap_pid": holder.pid, "bwrap_start_time": process_start(holder.pid),
        })
        return name

    def remove_network(self, name: str) -> None:
        directory = self.root / name
        if not directory.exists():
            return
        with contextlib.suppress(EngineError):
            record = self._network(name)
            for pid_key, start_key in (("pid", "start_time"), ("bwrap_pid", "bwrap_start_time")):
                _signal_group({"pid": record.get(pid_key), "start_time": record.get(start_key)}, signal.SIGKILL)
        holder = self._procs.pop(f"network:{name}", None)
        if holder is not None:
            holder.wait()
        shutil.rmtree(directory, ignore_errors=True)

    def disconnect(self, container_id: str, network: str) -> None:
        return None

    def _add_host(self, network: str, names: tuple[str, ...]) -> None:
        if not names:
            return
        path = self._dir(network) / "hosts"
        line = "127.0.0.1\t" + " ".join(names) + "\n"
        with self._hosts_lock:  # services are created in parallel
            current = path.read_text()
            if line not in current:
                write_private(path, current + line)

    # --- containers: host processes ------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> str:
        container_id = uuid.uuid4().hex
        # Environments (passwords) stay in this process's memory: records on disk never hold them.
        self._private[container_id] = {"env": dict(spec.env)}
        record: dict[str, Any] = {
            "kind": "container", "id": container_id, "name": spec.name, "network": spec.network,
            "labels": dict(spec.labels),
            # A service's command may carry its password (redis): only the agent's is recorded.
            "command": list(spec.command or ()) if spec.labels.get(LABEL_ROLE) == ROLE_AGENT else [],
            "binds": {k: list(v) for k, v in spec.binds.items()}, "working_dir": spec.working_dir,
            "interactive": spec.stdin_open, "pid": None, "start_time": None,
        }
        if spec.labels.get(LABEL_ROLE) != ROLE_AGENT:
            record.update(self._service_record(spec, container_id))
        self._add_host(spec.network, spec.aliases)
        self._write(spec.network, container_id, record)
        return container_id

    def _service_record(self, spec: ContainerSpec, container_id: str) -> dict[str, Any]:
        service = load_catalog().service(spec.labels.get(LABEL_SERVICE, ""))
        if service is None or service.sandbox is None:
            name = spec.labels.get(LABEL_SERVICE, spec.name)
            raise EngineError(f"the sandbox runtime cannot run {name}: it has no host program to run it with",
                              hint=f"Use --runtime docker for {name}.")
        for program in service.sandbox.binaries:  # before anything is created: a missing one is an error
            find_binary(program, service.sandbox)
        run_id = spec.labels.get(LABEL_RUN_ID, "run")
        data = private_dir(self.runs / run_id / "sandbox" / spec.labels[LABEL_SERVICE])
        short = Path(tempfile.mkdtemp(prefix=f"moat-{container_id[:8]}-"))  # Unix sockets need short paths
        try:
            host = prepare(service.sandbox, data, short, spec.env, spec.command, service.port, spec.binds)
        except BaseException:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(short, ignore_errors=True)
            raise
        self._private[container_id].update(host_env=host.env, secret_files=host.secret_files,
                                           server_stdin=host.server_stdin)
        # The log lives in the data directory: teardown saves it to the run's services/ before removal.
        return {"data": str(data), "short": str(short), "log": str(data / "service.log"),
                "host": {"setup": [[list(s.command), s.stdin] for s in host.setup], "server": list(host.server),
                         "scratch": [str(p) for p in host.scratch]}}

    def start_container(self, container_id: str) -> None:
        record = self._container(container_id)
        if record["labels"].get(LABEL_ROLE) == ROLE_AGENT:
            self._start_agent(record)
        else:
            self._start_service(record)

    def _start_service(self, record: dict[str, Any]) -> None:
        host = record["host"]
        private = self._private[record["id"]]
        enter = self._enter(record["network"])
        env = self._exec_env(record, {})
        log = open(record["log"], "ab")  # noqa: SIM115 — handed to the server process
        try:
            for path, text in private["secret_files"].items():
                write_private(Path(path), text)
            for command, stdin in host["setup"]:
                step = subprocess.run([*enter, *command], input=(stdin or "").encode(), env=env, stdout=log,
                                      stderr=subprocess.STDOUT, check=False)
                if step.returncode != 0:
                    log.flush()
                    tail = "\n".join(f"    | {line}" for line in self.logs(record["id"], tail=15).splitlines())
                    raise EngineError(f"setting up {record['name']} failed: `{' '.join(command[:2])}` exited with "
                                      f"{step.returncode}; its output:\n{tail}",
                                      hint=f"Check services.{record['labels'].get(LABEL_SERVICE)}.env in moat.yaml.")
        finally:
            for path in private["secret_files"]:
                Path(path).unlink(missing_ok=True)
        stdin = private.get("server_stdin")
        server = subprocess.Popen([*enter, *host["server"]], env=env,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        if stdin and server.stdin is not None:  # configuration that must not appear on a command line
            server.stdin.write(stdin.encode())
            server.stdin.close()
        log.close()
        self._procs[record["id"]] = server
        record.update(pid=server.pid, start_time=process_start(server.pid))
        self._write(record["network"], record["id"], record)

    def _agent_command(self, record: dict[str, Any]) -> list[str]:
        workspace = next((host for host, (target, _) in record["binds"].items() if target == WORKSPACE_MOUNT), None)
        hosts = self._dir(record["network"]) / "hosts"
        argv = ["bwrap", "--unshare-user", "--uid", str(self.uid), "--gid", str(self.gid), "--unshare-pid",
                "--unshare-ipc", "--unshare-uts", "--hostname", record["name"][:63], "--die-with-parent"]
        for entry in sorted(Path("/").iterdir()):
            if entry.name in _NOT_SHARED:
                continue
            if entry.is_symlink():
                argv += ["--symlink", os.readlink(entry), str(entry)]
            elif entry.exists():
                argv += ["--ro-bind", str(entry), str(entry)]
        # Mount points inside the sandbox (its own /tmp is private), not host paths:
        argv += ["--ro-bind", "/sys", "/sys", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",  # noqa: S108
                 "--tmpfs", "/run", "--ro-bind", str(hosts), "/etc/hosts"]
        if workspace:
            argv += ["--bind", workspace, WORKSPACE_MOUNT]
        argv += ["--chdir", record["working_dir"] or "/"]
        # Through a shell's exec, a command that does not exist exits 127, as in a container.
        return [*self._enter(record["network"]), *argv, "--", "/bin/sh", "-c", 'exec "$0" "$@"', *record["command"]]

    def _agent_env(self, record: dict[str, Any]) -> dict[str, str]:
        """Passed through the process environment: a command line is readable by every local user."""
        return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": "/tmp",  # noqa: S108
                "TERM": os.environ.get("TERM", "dumb"), "LANG": os.environ.get("LANG", "C.UTF-8"),
                **self._private.get(record["id"], {}).get("env", {})}

    def _start_agent(self, record: dict[str, Any]) -> None:
        interactive = record["interactive"]
        pipes = None if interactive else subprocess.PIPE
        agent = subprocess.Popen(self._agent_command(record), env=self._agent_env(record),
                                 stdin=None if interactive else subprocess.DEVNULL,
                                 stdout=pipes, stderr=pipes, start_new_session=not interactive)
        self._procs[record["id"]] = agent
        record.update(pid=agent.pid, start_time=process_start(agent.pid))
        self._write(record["network"], record["id"], record)

    def attach(self, container_id: str) -> Iterator[OutputChunk]:
        def chunks() -> Iterator[OutputChunk]:
            process = self._procs[container_id]  # started by now: attach is read after start
            selector = selectors.DefaultSelector()
            for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
                if pipe is not None:
                    os.set_blocking(pipe.fileno(), False)
                    selector.register(pipe, selectors.EVENT_READ, stream)
            while selector.get_map():
                for key, _ in selector.select():
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    yield OutputChunk(key.data, data)

        return chunks()

    def release(self, container_id: str) -> None:
        self.start_container(container_id)

    def attach_terminal(self, container_id: str) -> int:
        self.start_container(container_id)
        return self.wait(container_id)

    def wait(self, container_id: str) -> int:
        process = self._procs.get(container_id)
        if process is not None:
            return process.wait()
        record = self._container(container_id)
        while _alive(record):
            time.sleep(0.1)
        return -1  # not our child: its exit code is not ours to know

    def state(self, container_id: str) -> ContainerState:
        process = self._procs.get(container_id)
        if process is not None:
            code = process.poll()
            return ContainerState(code is None, code, "running" if code is None else "exited")
        record = self._container(container_id)
        running = _alive(record)
        return ContainerState(running, None if running else -1, "running" if running else "exited")

    def container_address(self, container_id: str, network: str) -> str | None:
        return None  # the run's network is private: the host cannot reach it

    def _exec_argv(self, record: dict[str, Any], command: tuple[str, ...]) -> list[str]:
        if not self.state(record["id"]).running:
            raise ContainerNotRunning(f"{record['name']} is not running")
        hosts = self._dir(record["network"]) / "hosts"
        # Only there to give the command the run's hosts file: the host's files stay as they are.
        sandbox = ["bwrap", "--unshare-user", "--uid", str(self.uid), "--gid", str(self.gid), "--ro-bind", "/", "/",
                   "--dev", "/dev", "--proc", "/proc", "--ro-bind", str(hosts), "/etc/hosts", "--die-with-parent", "--"]
        return [*self._enter(record["network"]), *sandbox, *command]

    def _exec_env(self, record: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        private = self._private.get(record["id"], {})
        return {**os.environ, **private.get("env", {}), **private.get("host_env", {}), **env}

    def exec(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecResult:
        record = self._container(container_id)
        done = subprocess.run(self._exec_argv(record, command), env=self._exec_env(record, env),
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        output = (done.stdout + done.stderr).decode(errors="replace")
        if "bwrap: execvp" in output:  # said the way container engines say it
            return ExecResult(127, f"{output.strip()}: executable file not found in $PATH")
        return ExecResult(done.returncode, output)

    def exec_stream(self, container_id: str, command: tuple[str, ...], env: Mapping[str, str]) -> ExecStream:
        record = self._container(container_id)
        process = subprocess.Popen(self._exec_argv(record, command), env=self._exec_env(record, env),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._procs[f"exec:{process.pid}"] = process
        stream_id = f"exec:{process.pid}"
        return ExecStream(self.attach(stream_id), process.wait)

    def logs(self, container_id: str, tail: int | None = None, timestamps: bool = False) -> str:
        record = self._container(container_id)
        try:
            lines = Path(record.get("log", "")).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if tail is not None:
            lines = lines[-tail:] if tail else []
        return "\n".join(lines) + ("\n" if lines else "")

    def stop_container(self, container_id: str, timeout: float) -> None:
        try:
            record = self._container(container_id)
        except ContainerNotRunning:
            return
        _signal_group(record, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(record) and time.monotonic() < deadline:
            process = self._procs.get(container_id)
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(0.05)
            else:
                time.sleep(0.05)
        _signal_group(record, signal.SIGKILL)
        process = self._procs.pop(container_id, None)
        if process is not None:
            process.wait()

    def remove_container(self, container_id: str) -> None:
        try:
            record = self._container(container_id)
        except ContainerNotRunning:
            return
        self.stop_container(container_id, STOP_GRACE)
        for key in ("data", "short"):
            if record.get(key):
                shutil.rmtree(record[key], ignore_errors=True)
        if record.get("data"):
            with contextlib.suppress(OSError):
                Path(record["data"]).parent.rmdir()  # the run's sandbox/ directory, once empty
        for path in record.get("host", {}).get("scratch", []):
            Path(path).unlink(missing_ok=True)
        (self.root / record["network"] / f"{container_id}.json").unlink(missing_ok=True)

    # --- what belongs to whom ----------------------------------------------------------------------------

    def objects_with_label(self, key: str) -> list[EngineObject]:
        return [EngineObject(r["kind"], r["id"], r.get("labels", {})) for r in self._records()
                if key in r.get("labels", {})]

    def find_labelled(self, labels: Mapping[str, str]) -> LabelledObjects:
        def matches(record: Mapping[str, Any]) -> bool:
            own = record.get("labels", {})
            return all(k in own and (not v or own[k] == v) for k, v in labels.items())

        records = [r for r in self._records() if matches(r)]
        return LabelledObjects([r["id"] for r in records if r["kind"] == "container"],
                               [r["id"] for r in records if r["kind"] == "network"], [])

    def remove_volume(self, name: str) -> None:
        return None


