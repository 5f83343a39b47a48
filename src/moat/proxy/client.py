"""moat's side of the shared proxy daemon: find it, start it, register runs with it, stop it.

Runs in moat's own environment and never imports mitmproxy: the daemon runs under the proxy's
virtualenv (``.venv/proxy``, made by ``make install``) as a detached process of its own session,
one per MOAT_HOME, found again through ``MOAT_HOME/proxy/`` by every moat that needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from moat.credentials.rules import Registration
from moat.files import private_dir
from moat.ownership import process_alive, signal_process
from moat.proxy import protocol
from moat.proxy.ca import PUBLIC_CERT, ensure_ca
from moat.proxy.errors import ProxyError
from moat.proxy.paths import PROTOCOL_VERSION, ProxyPaths, daemon_build

ENV_PROXY_PYTHON = "MOAT_PROXY_PYTHON"
PROXY_USER = "moat"  # the user name in the proxy URL (the Go tool's); the password is the run's token
START_TIMEOUT = 30.0  # mitmproxy takes about a second to import; a loaded machine, much longer
ANSWER_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class ProxyInfo:
    """A live daemon, as it described itself."""

    pid: int
    pid_start: str | None
    port: int  # on 127.0.0.1
    started_at: str
    paths: ProxyPaths
    ca_cert: Path  # moat-ca.crt: what runs mount read-only and trust
    listeners: dict[str, int] = field(default_factory=dict)  # every address it listens on → port
    runs: tuple[str, ...] = ()
    idle_seconds: float = 0.0
    idle_limit: float = 0.0
    upstream: tuple[str, ...] = ()  # the upstream proxies it goes through (from its environment)

    host = "127.0.0.1"

    @property
    def proxy_socket(self) -> Path:
        return self.paths.proxy_socket

    def url(self, token: str, host: str | None = None, port: int | None = None) -> str:
        """The proxy URL an agent is given: ``http://moat:<token>@host:port``."""
        return f"http://{PROXY_USER}:{token}@{host or self.host}:{port or self.port}"


class _Gone(Exception):
    """Nothing answers on the control socket."""


def find_proxy_python() -> Path:
    """The Python of the proxy's virtualenv: ``$MOAT_PROXY_PYTHON``, else ``<moat's venv>/proxy/bin/python``."""
    configured = os.environ.get(ENV_PROXY_PYTHON)
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ProxyError(f"{ENV_PROXY_PYTHON}={configured} is not an executable Python",
                             hint="Point it at the python of a virtualenv with mitmproxy==11.0.2 and moat installed.")
        return path
    candidate = Path(sys.prefix) / "proxy" / "bin" / "python"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise ProxyError(
        f"moat's credential proxy needs a Python environment of its own with mitmproxy; there is none at "
        f"{candidate.parent.parent}",
        hint=f"Run `make install` (it creates .venv/proxy), or set {ENV_PROXY_PYTHON} to the python of a "
             "virtualenv with mitmproxy==11.0.2 and moat installed (pip install --no-deps -e <moat>).",
    )


def ensure_running(home: Path, *, idle: float | None = None, environ: Mapping[str, str] | None = None,
                   timeout: float = START_TIMEOUT) -> ProxyInfo:
    """The daemon serving ``home``: the live one, else one started now (``idle``: its idle limit in
    seconds; ``environ``: its environment — upstream proxies and trusted roots come from it)."""
    paths = ProxyPaths(home)
    private_dir(paths.dir)
    ca = ensure_ca(home)  # made here, so that a run can mount it while the daemon still starts
    try:
        with FileLock(str(paths.spawn_lock), timeout=timeout + STOP_TIMEOUT, mode=0o600):
            info = _reuse(paths, ca.cert_file)
            if info is not None:
                return info
            return _spawn(paths, ca.cert_file, idle, environ, timeout)
    except Timeout:
        raise ProxyError(f"another moat has been starting the proxy for more than {timeout:.0f} s",
                         hint=f"See {paths.log}; `moat proxy stop` and run again.") from None


def register(home: Path, registration: Registration) -> ProxyInfo:
    """Hand the run's rules to the daemon (started if need be). The daemon that took them is returned:
    a daemon idling out in the meantime is replaced, on another port."""
    paths = ProxyPaths(home)
    for _ in range(3):
        info = ensure_running(home)
        try:
            reply = _request(paths, {"op": protocol.OP_REGISTER, "registration": registration.to_json()})
        except _Gone:
            continue
        if reply.get("ok"):
            return info
        if reply.get("code") == protocol.CODE_STOPPING:
            _wait_gone(info.pid, info.pid_start, STOP_TIMEOUT)
            continue
        raise ProxyError(f"moat's proxy refused run {registration.run_id}: {reply.get('error')}")
    raise ProxyError(f"moat's proxy stopped each time run {registration.run_id} registered",
                     hint=f"See {paths.log}.")


def unregister(home: Path, run_id: str) -> bool:
    """Forget the run's rules. Idempotent; a daemon that is gone has nothing of the run left (False)."""
    try:
        reply = _request(ProxyPaths(home), {"op": protocol.OP_UNREGISTER, "run_id": run_id})
    except (_Gone, ProxyError):
        return False
    return bool(reply.get("ok") and reply.get("removed"))


def listen(home: Path, host: str) -> int:
    """The port the daemon listens on at ``host`` — an address of this machine, such as a Docker
    bridge's gateway — listening there now if it did not."""
    paths = ProxyPaths(home)
    for _ in range(2):
        ensure_running(home)
        try:
            reply = _request(paths, {"op": protocol.OP_LISTEN, "host": host})
        except _Gone:
            continue
        if reply.get("ok"):
            return int(reply["port"])
        if reply.get("code") != protocol.CODE_STOPPING:
            raise ProxyError(f"moat's proxy cannot listen on {host}: {reply.get('error')}")
    raise ProxyError(f"moat's proxy stopped while asked to listen on {host}", hint=f"See {paths.log}.")


def status(home: Path) -> ProxyInfo | None:
    """The live daemon, or None."""
    paths = ProxyPaths(home)
    try:
        reply = _request(paths, {"op": protocol.OP_STATUS})
    except _Gone:
        return None
    return _info(paths, reply, paths.ca_dir / PUBLIC_CERT) if reply.get("ok") else None


def stop(home: Path, timeout: float = STOP_TIMEOUT) -> ProxyInfo | None:
    """Stop the daemon; the one that was running, or None. Asked first, then signalled."""
    paths = ProxyPaths(home)
    pid, start = None, None
    info = status(home)
    if info is not None:
        pid, start = info.pid, info.pid_start
        with contextlib.suppress(_Gone, ProxyError):
            _request(paths, {"op": protocol.OP_STOP})
    else:
        state = _read_state(paths)  # a daemon that does not answer: its pid file names it
        if state is None or not process_alive(state["pid"], None, state.get("pid_start")):
            _remove_state(paths, None)
            return None
        pid, start = int(state["pid"]), state.get("pid_start")
    if not _wait_gone(pid, start, timeout):
        _terminate(pid, start)
    _remove_state(paths, pid)
    return info or ProxyInfo(pid=pid, pid_start=start, port=0, started_at="", paths=paths,
                             ca_cert=paths.ca_dir / PUBLIC_CERT)


# -- internals ---------------------------------------------------------------------------------------


def _request(paths: ProxyPaths, message: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """One request and its reply over the control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(paths.control))
        except (FileNotFoundError, ConnectionRefusedError):
            raise _Gone from None
        except OSError as exc:
            raise ProxyError(f"cannot reach moat's proxy at {paths.control}: {exc.strerror or exc}") from None
        try:
            sock.sendall(protocol.encode(message))
            buffer = bytearray()
            while not buffer.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise _Gone  # it closed without answering: it is on its way out
                buffer += chunk
                if len(buffer) > protocol.MAX_LINE:
                    raise ProxyError("moat's proxy answered with more than a reply")
        except TimeoutError:
            raise ProxyError(f"moat's proxy did not answer within {timeout:.0f} s",
                             hint=f"See {paths.log}; `moat proxy stop` ends it.") from None
        except (BrokenPipeError, ConnectionResetError):
            raise _Gone from None
    try:
        return protocol.decode(bytes(buffer))
    except ValueError:
        raise ProxyError("moat's proxy answered something that is not a reply") from None


def _info(paths: ProxyPaths, reply: Mapping[str, Any], ca_cert: Path) -> ProxyInfo:
    return ProxyInfo(
        pid=int(reply["pid"]), pid_start=reply.get("pid_start"), port=int(reply["port"]),
        started_at=str(reply.get("started_at", "")), paths=paths, ca_cert=ca_cert,
        listeners={str(k): int(v) for k, v in dict(reply.get("listeners") or {}).items()},
        runs=tuple(reply.get("runs") or ()), idle_seconds=float(reply.get("idle_seconds") or 0),
        idle_limit=float(reply.get("idle_limit") or 0), upstream=tuple(reply.get("upstream") or ()),
    )


def _reuse(paths: ProxyPaths, ca_cert: Path) -> ProxyInfo | None:
    """The live daemon, if one answers; a daemon that is there but does not answer is ended."""
    try:
        reply = _request(paths, {"op": protocol.OP_STATUS}, timeout=3.0)
    except (_Gone, ProxyError):
        reply = None
    if reply is not None and reply.get("ok"):
        info = _info(paths, reply, ca_cert)
        if reply.get("stopping"):  # idling out right now: let it go, start another
            _wait_gone(info.pid, info.pid_start, STOP_TIMEOUT)
            return None
        if reply.get("protocol") == PROTOCOL_VERSION and reply.get("build") == daemon_build():
            return info
        if info.runs:
            raise ProxyError("moat's proxy daemon is from another version of moat and serves runs",
                             hint="Let those runs end, then `moat proxy stop`.")
        stop(paths.home)
        return None
    state = _read_state(paths)
    if state is not None and process_alive(int(state["pid"]), None, state.get("pid_start")):
        # Alive but not answering in time: busy (a burst of connections, a slow disk), or hung. It may
        # serve other runs, whose agents would lose their proxy without a word if it were ended here.
        raise ProxyError(f"moat's proxy (pid {state['pid']}) is running but did not answer in time",
                         hint=f"It may be busy; run again in a moment. If it stays so, `moat proxy stop`"
                              f" (runs using it lose their grants) and see {paths.log}.")
    _remove_state(paths, None)
    return None


def _spawn(paths: ProxyPaths, ca_cert: Path, idle: float | None, environ: Mapping[str, str] | None,
           timeout: float) -> ProxyInfo:
    python = find_proxy_python()
    argv = [str(python), "-m", "moat.proxy.daemon", "--home", str(paths.home)]
    if idle is not None:
        argv += ["--idle", str(idle)]
    env = dict(os.environ if environ is None else environ)
    env.pop("PYTHONPATH", None)  # the proxy's virtualenv has its own moat (an editable install)
    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=env, cwd="/")
    finally:
        os.close(fd)
    # Reaped here if it ends while this moat still runs (a zombie would look alive to no one, but
    # would hold its pid); once this moat exits it belongs to init.
    threading.Thread(target=process.wait, name="moat-proxy-reaper", daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise ProxyError(f"moat's proxy daemon exited as it started (code {code})",
                             hint=_log_tail(paths))
        state = _read_state(paths)
        if state is not None and state.get("pid") == process.pid:
            try:
                reply = _request(paths, {"op": protocol.OP_STATUS})
            except _Gone:
                reply = {}
            if reply.get("ok"):
                return _info(paths, reply, ca_cert)
        time.sleep(0.02)
    _terminate(process.pid, None)
    raise ProxyError(f"moat's proxy daemon did not start within {timeout:.0f} s", hint=_log_tail(paths))


def _read_state(paths: ProxyPaths) -> dict[str, Any] | None:
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def _remove_state(paths: ProxyPaths, pid: int | None) -> None:
    """Remove daemon.json if it is stale (names ``pid``, or a process that is gone)."""
    state = _read_state(paths)
    if state is None or state["pid"] == pid or not process_alive(state["pid"], None, state.get("pid_start")):
        paths.state.unlink(missing_ok=True)


def _wait_gone(pid: int, start: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid, None, start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, start: str | None) -> None:
    """SIGTERM, then SIGKILL: only to the process that started at ``start``."""
    if signal_process(pid, start, signal.SIGTERM) and not _wait_gone(pid, start, 5.0):
        signal_process(pid, start, signal.SIGKILL)
        _wait_gone(pid, start, 5.0)


def _log_tail(paths: ProxyPaths) -> str:
    try:
        lines = paths.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        lines = []
    shown = "\n".join(f"  {line}" for line in lines) or "  (it wrote nothing)"
    return f"Its log ({paths.log}) ends with:\n{shown}"
