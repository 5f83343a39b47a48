"""The shared proxy daemon: ``python -m moat.proxy.daemon --home MOAT_HOME`` in the proxy's own
virtualenv (mitmproxy), started by ``moat.proxy.client`` — one per MOAT_HOME.

It serves mitmproxy on 127.0.0.1:<ephemeral> (and on any other local address a client asks for,
such as a Docker bridge's gateway), the same proxy on ``proxy.sock`` for runs in network namespaces
of their own, and the control socket. ``daemon.json`` appears once all of them listen. It stops on
SIGTERM, on a ``stop`` request, and by itself once no run has been registered for ``--idle``
seconds; it removes its sockets and ``daemon.json`` as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import resource
import signal
import ssl
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from moat.credentials.rules import Registration
from moat.files import now_iso, private_dir, write_private
from moat.ownership import process_start
from moat.proxy import access, control, protocol, relay
from moat.proxy.addons import addons
from moat.proxy.ca import ensure_ca
from moat.proxy.flows import ProxyState
from moat.proxy.paths import PROTOCOL_VERSION, ProxyPaths, daemon_build
from moat.proxy.registry import RunRegistry
from moat.proxy.upstream import UpstreamConfig

log = logging.getLogger("moat.proxy")

LISTEN_HOST = "127.0.0.1"
DEFAULT_IDLE = 60.0
START_DEADLINE = 20.0
EXIT_ALREADY_RUNNING = 3


class StartupError(Exception):
    pass


def _raise_open_files_limit() -> None:
    """Every run's connections share this one process: the usual soft limit (1024) is soon reached
    (then every run, and the control socket, wait), the hard limit is there to be used."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if wanted > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Daemon:
    def __init__(self, paths: ProxyPaths, idle: float, port: int = 0) -> None:
        """``port``: where it listens on 127.0.0.1 (0: a port the kernel picks; a pod's proxy has a fixed one)."""
        self.paths = paths
        self.idle = idle
        self.fixed_port = port
        self.runs = RunRegistry(paths.home)
        self.upstream = UpstreamConfig.from_env(os.environ)
        self.state = ProxyState(self.runs, self.upstream)
        self.port = 0
        self.listeners: dict[str, int] = {}
        self.started_at = now_iso()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._listen_lock = asyncio.Lock()
        self.master: Any = None

    # -- the Controller the control socket serves -------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def register(self, registration: Registration) -> None:
        self.runs.register(registration)

    def unregister(self, run_id: str) -> bool:
        removed = self.runs.unregister(run_id)
        for client_id, owner in list(self.state.connections.items()):
            if owner == run_id:  # its open connections lose the run with it
                del self.state.connections[client_id]
        return removed

    def touch(self) -> None:
        self.runs.touch()

    def status(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "build": daemon_build(),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "port": self.port,
            "listeners": dict(self.listeners),
            "runs": self.runs.run_ids(),
            "started_at": self.started_at,
            "idle_seconds": round(self.runs.idle_for(), 1),
            "idle_limit": self.idle,
            "upstream": [p.describe() for p in self.upstream.proxies],
            "proxy_socket": str(self.paths.proxy_socket),
            "stopping": self._stopping,
        }

    def stop(self) -> None:
        if not self._stopping:
            log.info("stopping")
        self._stopping = True
        self._stopped.set()

    async def listen(self, host: str) -> int:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IP address") from None
        host = str(address)
        if address.is_unspecified:  # every interface: the proxy would be open to the network
            raise ValueError(f"{host} is every interface, not an address of this machine")
        if not access.is_local_address(address):
            raise ValueError(f"{host} is not an address of this machine")
        async with self._listen_lock:
            if host not in self.listeners:
                self.listeners[host] = await self._add_listener(f"regular@{host}:0")
                log.info("listening on %s:%d too", host, self.listeners[host])
            return self.listeners[host]

    # -- life -------------------------------------------------------------------------------------

    async def run(self) -> int:
        asyncio.get_running_loop().set_exception_handler(_quiet_cancellations)
        _raise_open_files_limit()
        ca = ensure_ca(self.paths.home)
        opts = options.Options()
        self.master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        self.master.addons.add(*addons(self.state))
        # Eager: a CONNECT opens its server connection at once, so a protocol whose server speaks
        # first (MySQL, SMTP) works through a tunnel to moat-host:<port>. mitmproxy's eager connect
        # ignores an upstream proxy though, so with one configured connections wait for the first
        # request (lazy), which can then be sent through it.
        strategy = "lazy" if self.upstream.proxies else "eager"
        opts.update(confdir=str(ca.dir), connection_strategy=strategy, **_upstream_trust(os.environ))
        master_task = asyncio.create_task(self.master.run())
        try:
            self.port = await self._add_listener(f"regular@{LISTEN_HOST}:{self.fixed_port}", master_task)
            self.listeners[LISTEN_HOST] = self.port
            servers = await self._serve_sockets()
            self._write_state()
            log.info("ready on %s:%d (pid %d)", LISTEN_HOST, self.port, os.getpid())
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
            await self._wait(master_task)
            for server in servers:
                server.close()
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            return 1
        finally:
            self._cleanup()
            if not master_task.done():
                self.master.shutdown()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(master_task, 10)
        return 0

    async def _add_listener(self, spec: str, master_task: asyncio.Task[Any] | None = None) -> int:
        """Listen with mitmproxy at ``spec`` (port 0: the kernel picks one) and return the port."""
        # The first listener replaces mitmproxy's default (port 8080), before mitmproxy starts; the
        # others are added to the running proxy.
        self.master.options.update(mode=[spec] if master_task is not None else [*self.master.options.mode, spec])
        proxyserver = self.master.addons.get("proxyserver")
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if master_task is not None and master_task.done():
                raise StartupError("mitmproxy stopped while starting (see the lines above)")
            with contextlib.suppress(KeyError):
                instance = proxyserver.servers[spec]
                if instance.is_running and instance.listen_addrs:
                    return int(instance.listen_addrs[0][1])
                if not proxyserver.servers.is_updating and instance.last_exception is not None:
                    break
            await asyncio.sleep(0.01)
        self.master.options.update(mode=[m for m in self.master.options.mode if m != spec])
        if master_task is not None:
            raise StartupError(f"mitmproxy did not listen on {spec.split('@', 1)[1]}")
        raise OSError(f"the proxy cannot listen on {spec.split('@', 1)[1].rsplit(':', 1)[0]}")

    async def _serve_sockets(self) -> list[asyncio.Server]:
        paths = self.paths
        for stale in (paths.control, paths.proxy_socket):  # a dead daemon's: ours now (we hold the lock)
            stale.unlink(missing_ok=True)
        controller = await asyncio.start_unix_server(partial(control.serve, self), path=str(paths.control),
                                                     limit=protocol.MAX_LINE)
        os.chmod(paths.control, 0o600)
        paths.relay_dir.mkdir(mode=0o700, exist_ok=True)
        proxy = await relay.serve_unix(str(paths.proxy_socket), relay.to_tcp(LISTEN_HOST, self.port))
        # Whoever can reach this socket still needs a run's token: the proxy answers 407 without one.
        # A sandboxed relay may run as another user than the daemon (the workspace's owner).
        os.chmod(paths.proxy_socket, 0o666)  # noqa: S103 — see above
        return [controller, proxy]

    def _write_state(self) -> None:
        pid = os.getpid()
        state = {"pid": pid, "pid_start": process_start(pid), "port": self.port, "started_at": self.started_at,
                 "protocol": PROTOCOL_VERSION, "control": str(self.paths.control),
                 "proxy_socket": str(self.paths.proxy_socket)}
        write_private(self.paths.state, json.dumps(state, indent=2) + "\n")

    async def _wait(self, master_task: asyncio.Task[Any]) -> None:
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            while not self._stopping:
                done, _ = await asyncio.wait({stopped, master_task}, timeout=1.0,
                                             return_when=asyncio.FIRST_COMPLETED)
                if master_task in done:
                    log.error("mitmproxy stopped")
                    break
                if self.idle > 0 and self.runs.idle_for() >= self.idle:
                    log.info("no run for %.0f s: stopping", self.idle)
                    self.stop()
        finally:
            stopped.cancel()

    def _cleanup(self) -> None:
        self._stopping = True
        for path in (self.paths.control, self.paths.proxy_socket):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.paths.state.read_text()).get("pid") == os.getpid():
                self.paths.state.unlink()


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Connections still open when the daemon stops are cancelled; asyncio would log each as an
    error (with a traceback) although nothing went wrong."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def _upstream_trust(env: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """The roots upstream servers are verified against: the host's, as the daemon's environment
    names them (SSL_CERT_FILE / SSL_CERT_DIR), else OpenSSL's defaults; mitmproxy would otherwise use
    certifi's bundle and ignore a company's own CA."""
    cafile = env.get("SSL_CERT_FILE") or None
    cadir = env.get("SSL_CERT_DIR") or None
    if cafile is None and cadir is None:
        defaults = ssl.get_default_verify_paths()
        cafile = defaults.cafile if defaults.cafile and Path(defaults.cafile).is_file() else None
        cadir = defaults.capath if cafile is None and defaults.capath and Path(defaults.capath).is_dir() else None
    trust: dict[str, Any] = {}
    if cafile:
        trust["ssl_verify_upstream_trusted_ca"] = cafile
    if cadir:
        trust["ssl_verify_upstream_trusted_confdir"] = cadir
    return trust


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # mitmproxy's per-connection chatter stays out of the log
    log.setLevel(logging.INFO)


def _lock(path: Path) -> int | None:
    """Hold ``path`` for the daemon's life; None when another daemon holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moat.proxy.daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, type=Path, help="the MOAT_HOME it serves")
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE,
                        help="stop after this many seconds without a registered run (0: never)")
    args = parser.parse_args(argv)
    configure_logging()
    os.umask(0o077)
    paths = ProxyPaths(args.home.expanduser().resolve())
    private_dir(paths.dir)
    lock = _lock(paths.daemon_lock)
    if lock is None:
        log.error("another moat proxy daemon serves %s", paths.home)
        return EXIT_ALREADY_RUNNING
    try:
        return asyncio.run(Daemon(paths, args.idle).run())
    finally:
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
