"""moat's routing proxy: one port on 127.0.0.1 (``MOAT_PROXY_PORT``, default 8080) through which the
runs' published endpoints are reached, as in the Go tool:

- ``https://<endpoint>.<run>.localhost:<port>`` (and ``http://``, on the same port: the first byte of
  a connection tells TLS from plain HTTP) goes to the agent's port, through the Unix socket the run's
  pod holder listens on (plan.endpoints);
- ``https://<run>.localhost:<port>`` is the run's single endpoint, or an index of its endpoints;
- ``https://localhost:<port>`` is an index of every run's endpoints (``Accept: application/json``
  gives JSON).

TLS with certificates made here for each host name, signed by moat's CA (MOAT_HOME/proxy/ca: trust
``moat-ca.crt`` once). Routes come from run.routes (read per connection); bytes are passed through
untouched after the request head (keep-alive, streaming and WebSockets work). The daemon is started by
the first run that publishes ports, owns ``routes/daemon.json``, and ends once no route has been left
for ``IDLE`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import html
import ipaddress
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from filelock import FileLock

from moat.errors import MoatError
from moat.files import private_dir, write_private
from moat.ownership import process_alive, process_start
from moat.proxy.ca import KEY_AND_CERT, ensure_ca
from moat.run.routes import ROUTES_DIR, Route, RouteTable

IDLE = 60.0  # seconds without a route before the daemon ends (MOAT_ROUTER_IDLE)
MAX_CERTIFICATES = 256
MAX_CONNECTIONS = 512  # at once: past them a new one waits (the daemon never runs out of descriptors)
ENV_IDLE = "MOAT_ROUTER_IDLE"
HEAD_LIMIT = 64 * 1024
ROUTES_TTL = 0.5  # seconds a read of the route table serves
HEAD_TIMEOUT = 30.0
START_TIMEOUT = 10.0
STATE = "daemon.json"
LOG = "daemon.log"


class RouterError(MoatError):
    pass


# --- certificates ----------------------------------------------------------------------------------


class Certificates:
    """A certificate per host name, signed by moat's CA, loaded into an SSLContext of its own."""

    def __init__(self, home: Path) -> None:
        ca = ensure_ca(home)
        raw = (ca.dir / KEY_AND_CERT).read_bytes()
        self.ca_key = serialization.load_pem_private_key(raw, password=None)
        self.ca_cert = x509.load_pem_x509_certificate(raw[raw.index(b"-----BEGIN CERTIFICATE-----"):])
        self.dir = Path(tempfile.mkdtemp(prefix="moat-router-"))  # 0700: the leaf keys
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.lock = threading.Lock()

    def context(self, host: str) -> ssl.SSLContext:
        with self.lock:
            found = self.contexts.get(host)
            if found is None:
                if len(self.contexts) >= MAX_CERTIFICATES:  # the oldest goes (names of runs long over)
                    oldest = next(iter(self.contexts))
                    if oldest != "localhost":
                        del self.contexts[oldest]
                found = self.contexts[host] = self._make(host)
            return found

    def _make(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(host)]
        if host == "localhost":
            names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self.ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        path = self.dir / "leaf.pem"  # read at once by load_cert_chain, then replaced by the next
        write_private(path, (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
                             + cert.public_bytes(serialization.Encoding.PEM)
                             + self.ca_cert.public_bytes(serialization.Encoding.PEM)).decode())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(path)
        return context

    def server_context(self, known: Callable[[str], bool]) -> ssl.SSLContext:
        """The default context (``localhost``'s certificate), handing a host a route names its own:
        ``known`` says which (any other name gets ``localhost``'s, and costs nothing)."""
        base = self.context("localhost")

        def choose(sslobj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
            if name and known(name.lower()):
                sslobj.context = self.context(name.lower())

        base.sni_callback = choose
        return base

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --- serving ---------------------------------------------------------------------------------------


class Router:
    def __init__(self, home: Path, port: int, idle: float = IDLE) -> None:
        self.home = home
        self.port = port
        self.idle = idle
        self.table = RouteTable(home)
        self.certificates = Certificates(home)
        self.tls = self.certificates.server_context(self._known_host)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cached: tuple[float, list[Route]] | None = None

    async def serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        idle_since = time.monotonic()
        watcher = asyncio.create_task(self._idle(idle_since))
        slots = asyncio.Semaphore(MAX_CONNECTIONS)
        try:
            while not watcher.done():
                await slots.acquire()
                accept = asyncio.ensure_future(loop.sock_accept(listener))
                done, _ = await asyncio.wait({accept, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if accept not in done:
                    accept.cancel()
                    break
                try:
                    client, _ = accept.result()
                except OSError:  # out of descriptors, a connection reset before accept: not the end
                    slots.release()
                    await asyncio.sleep(0.1)
                    continue
                task = asyncio.create_task(self._connection(client))
                self._tasks.add(task)  # held until done: a task nobody holds may be collected mid-way
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _task: slots.release())
        finally:
            watcher.cancel()

    async def _routes(self) -> list[Route]:
        """The table, read at most every ROUTES_TTL seconds (each read looks at every run's record): a
        run's route is in it before its agent starts, and a dead run's stays a moment at most."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > ROUTES_TTL:
            self._cached = (now, await asyncio.to_thread(self.table.routes))
        return self._cached[1]

    async def _idle(self, since: float) -> None:
        while True:
            await asyncio.sleep(min(2.0, self.idle / 2))
            try:
                routes = await asyncio.to_thread(self.table.routes)
            except Exception:
                routes = [Route("?", "?", "?", {})]
            if routes:
                since = time.monotonic()
            elif time.monotonic() - since > self.idle and await asyncio.to_thread(self._may_end):
                return

    def _may_end(self) -> bool:
        """Ending, under the spawn lock (a moat starting a run meanwhile waits, then starts another
        daemon): only if still no route, and then the state file goes at once."""
        state_file, _, spawn_lock = _paths(self.home)
        with FileLock(str(spawn_lock), mode=0o600):
            if self.table.routes():
                return False
            with contextlib.suppress(OSError, ValueError):
                if json.loads(state_file.read_text()).get("pid") == os.getpid():
                    state_file.unlink()
            return True

    def _known_host(self, host: str) -> bool:
        routes = self._cached[1] if self._cached is not None else []
        labels = host.removesuffix(".localhost").split(".") if host.endswith(".localhost") else []
        return host == "localhost" or (0 < len(labels) <= 2 and any(r.host == labels[-1] for r in routes))

    async def _connection(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        # Small writes (TLS handshake records, a request's answer) go at once: with Nagle's algorithm
        # and the peer's delayed ACK each new TLS connection waited ~40 ms (measured).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer: asyncio.StreamWriter | None = None
        try:
            first = await asyncio.wait_for(_peek(loop, client), HEAD_TIMEOUT)
            if first == b"\x16":
                await self._routes()  # the names the handshake may ask a certificate for
            reader = asyncio.StreamReader(limit=HEAD_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await asyncio.wait_for(loop.connect_accepted_socket(
                lambda: protocol, client, ssl=self.tls if first == b"\x16" else None), HEAD_TIMEOUT)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            await self._request(head, reader, writer, secure=first == b"\x16")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError,
                ValueError):
            pass
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                client.close()

    async def _request(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       secure: bool) -> None:
        host, wants_json = _host_and_accept(head)
        routes = await self._routes()
        scheme = "https" if secure else "http"
        labels = host.removesuffix(".localhost").split(".") if host.endswith(".localhost") else []
        if host in ("localhost", "127.0.0.1"):
            return await _index(writer, self._listing(routes, scheme), wants_json, "moat: every run's endpoints")
        by_host = {r.host: r for r in routes}
        route = by_host.get(labels[-1]) if labels else None
        if route is None:
            return await _reply(writer, 404, f"no run answers at {host}; `moat open` lists them\n")
        if len(labels) == 1:
            if len(route.endpoints) != 1:
                return await _index(writer, self._listing([route], scheme), wants_json,
                                    f"moat: run {route.name}'s endpoints")
            endpoint = next(iter(route.endpoints))
        elif len(labels) == 2:
            endpoint = labels[0]
        else:
            return await _reply(writer, 404, f"no endpoint answers at {host}\n")
        if endpoint not in route.endpoints:
            return await _reply(writer, 404, f"run {route.name} has no endpoint {endpoint!r}"
                                             f" (it has {', '.join(sorted(route.endpoints))})\n")
        port, path = route.endpoints[endpoint]
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 10)
        except (TimeoutError, OSError):
            return await _reply(writer, 502, f"run {route.name}'s port {port} ({endpoint}) cannot be reached yet\n")
        upstream_writer.write(_one_request(head))
        # The client's side may end first (its EOF goes on to the agent); the agent's side ending ends
        # the connection (over TLS there is no half-close to pass on).
        up = asyncio.create_task(_pipe(reader, upstream_writer))
        try:
            try:
                first = await upstream_reader.read(65536)
            except (ConnectionError, OSError):  # reset: it hung up with the request unread
                first = b""
            if not first:
                return await _reply(writer, 502, f"run {route.name}'s port {port} ({endpoint}) closed the"
                                                 " connection without an answer (not listening yet?)\n")
            writer.write(first)
            await writer.drain()
            await _pipe(upstream_reader, writer)
        finally:
            up.cancel()
            upstream_writer.close()

    def _listing(self, routes: list[Route], scheme: str) -> list[dict[str, Any]]:
        return [{"name": r.name, "run_id": r.run_id, "base_url": f"{scheme}://{r.host}.localhost:{self.port}",
                 "endpoints": [{"name": e, "port": p, "url": f"{scheme}://{e}.{r.host}.localhost:{self.port}"}
                               for e, (p, _) in sorted(r.endpoints.items())]} for r in routes]


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The connection's first byte, left in the socket (TLS starts with 0x16)."""
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)


def _one_request(head: bytes) -> bytes:
    """The head with ``Connection: close``: one request per connection to the agent, so that a client
    reusing its connection for another host's request never reaches this run with it (a WebSocket's
    upgrade keeps its own ``Connection: Upgrade``)."""
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0].strip().lower() for line in lines[1:]]
    if b"upgrade" in names:
        return head
    kept = [lines[0], *(line for line, name in zip(lines[1:], names, strict=True)
                        if name not in (b"connection", b"keep-alive") and line)]
    return b"\r\n".join([*kept, b"Connection: close", b"", b""])


def _host_and_accept(head: bytes) -> tuple[str, bool]:
    host, accept = "", ""
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            host = value.strip().lower()
        elif name.strip().lower() == "accept":
            accept = value.lower()
    if not host.startswith("["):  # an IPv6 literal keeps its colons
        host = host.rsplit(":", 1)[0]
    return host.rstrip("."), "application/json" in accept


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (OSError, ConnectionError, ssl.SSLError, RuntimeError):
        sink.close()


async def _reply(writer: asyncio.StreamWriter, status: int, text: str, kind: str = "text/plain") -> None:
    reason = {200: "OK", 404: "Not Found", 502: "Bad Gateway"}[status]
    body = text.encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()


async def _index(writer: asyncio.StreamWriter, listing: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        return await _reply(writer, 200, json.dumps({"agents": listing}, indent=2) + "\n", "application/json")
    items = "".join(f"<li>{html.escape(a['name'])} ({a['run_id']})<ul>"
                    + "".join(f"<li><a href=\"{html.escape(e['url'])}\">{html.escape(e['name'])}</a>"
                              f" → port {e['port']}</li>" for e in a["endpoints"]) + "</ul></li>" for a in listing)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><ul>{items or '<li>no run publishes ports</li>'}</ul></body></html>\n")
    return await _reply(writer, 200, page, "text/html")


# --- the daemon's life -----------------------------------------------------------------------------


def _paths(home: Path) -> tuple[Path, Path, Path]:
    directory = home / ROUTES_DIR
    return directory / STATE, directory / LOG, directory / ".spawn.lock"


def running(home: Path) -> dict[str, Any] | None:
    """The live daemon's state (pid, port), or None."""
    state_file, _, _ = _paths(home)
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return None
    if not process_alive(state["pid"], None, state.get("pid_start") or None):
        return None
    return state


def ensure_running(home: Path, port: int, timeout: float = START_TIMEOUT) -> int:
    """The routing proxy for ``home`` listening on ``port``: the live one, else one started now."""
    state_file, log, spawn_lock = _paths(home)
    private_dir(state_file.parent)
    with FileLock(str(spawn_lock), timeout=timeout * 2, mode=0o600):
        state = running(home)
        if state is not None:
            if state.get("port") != port:
                raise RouterError(f"moat's routing proxy listens on port {state.get('port')}, not {port}",
                                  hint=f"Set MOAT_PROXY_PORT={state.get('port')}, or stop the runs that publish"
                                       " ports (it ends a minute after the last one).")
            return port
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            idle = os.environ.get(ENV_IDLE, "")
            argv = [sys.executable, "-m", "moat.run.router", "--home", str(home), "--port", str(port),
                    *(["--idle", idle] if idle else [])]
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                       start_new_session=True, close_fds=True, cwd="/")
        finally:
            os.close(fd)
        threading.Thread(target=process.wait, name="moat-router-reaper", daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RouterError(f"moat's routing proxy could not start on 127.0.0.1:{port}: {' '.join(tail)}",
                                  hint="Another program may hold the port: set MOAT_PROXY_PORT to a free one.")
            current = running(home)
            if current is not None and current.get("pid") == process.pid:
                return port
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        raise RouterError(f"moat's routing proxy did not start within {timeout:.0f} s", hint=f"See {log}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moat-router")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--idle", type=float, default=IDLE)
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", args.port))
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", flush=True)
        return 1
    listener.listen(128)
    listener.setblocking(False)
    state_file, _, _ = _paths(args.home)
    pid = os.getpid()
    write_private(state_file, json.dumps({"pid": pid, "pid_start": process_start(pid) or "", "port": args.port}))
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    with contextlib.suppress(ValueError, OSError):  # as many descriptors as this process may have
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    router = Router(args.home, args.port, max(0.5, args.idle))
    try:
        asyncio.run(router.serve(listener))
    finally:
        router.certificates.close()
        listener.close()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state_file.read_text()).get("pid") == pid:
                state_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
