"""What the proxy's integration tests share: a test CA, HTTPS upstreams on loopback that record what
they receive, an upstream-proxy stand-in, the real daemon (started with the proxy's virtualenv and
always ended), and clients (curl, Python) that go through it.

Every listener here is on 127.0.0.1 and started by the tests; nothing reaches another machine.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from moat.credentials.rules import Registration
from moat.ownership import process_alive, signal_process
from moat.proxy import client
from moat.proxy.errors import ProxyError
from tests.conftest import skip_or_fail

UPSTREAM_NAMES = ("api.github.com", "github.com", "api.anthropic.com", "api.telegram.org", "api.example.test",
                  "untrusted.test", "moat-host", "localhost")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def require_proxy_python() -> Path:
    try:
        return client.find_proxy_python()
    except ProxyError as exc:
        skip_or_fail(exc.render())
        raise


def require_curl() -> None:
    if subprocess.run(["sh", "-c", "command -v curl"], capture_output=True, check=False).returncode:
        skip_or_fail("curl is not installed")


# -- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    cert_file: Path
    leaf_cert: Path
    leaf_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.leaf_cert, self.leaf_key)
        return context


def make_ca(directory: Path, name: str = "moat test CA") -> TestCA:
    """A CA and one server certificate for every upstream name (and 127.0.0.1) the tests use."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in UPSTREAM_NAMES]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return TestCA(ca_file, cert_file, key_file)


# -- an upstream server ------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: int = 0  # which connection it came on

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class Upstream:
    """An HTTP(S) server on 127.0.0.1 that records every request.

    /echo…       → 200, the request as JSON
    /sse         → text/event-stream without a length: "one", then (once ``gate`` is set) "two"
    /bytes/<n>   → n bytes, with a Content-Length
    """

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    sse_first_sent: threading.Event = field(default_factory=threading.Event)


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _record(self) -> Seen:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, list(self.headers.items()), body, self.client_address[1])
            upstream.seen.append(seen)
            return seen

        def do_GET(self) -> None:
            seen = self._record()
            if self.path == "/sse":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"data: one\n\n")
                self.wfile.flush()
                upstream.sse_first_sent.set()
                upstream.gate.wait(15)
                self.wfile.write(b"data: two\n\n")
                self.wfile.flush()
                self.close_connection = True
                return
            if self.path.startswith("/bytes/"):
                size = int(self.path.rsplit("/", 1)[1])
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                block = b"x" * 65536
                left = size
                while left:
                    n = min(left, len(block))
                    self.wfile.write(block[:n])
                    left -= n
                return
            self._json(seen)

        do_POST = do_GET
        do_PUT = do_GET

        def _json(self, seen: Seen) -> None:
            body = json.dumps({"method": seen.method, "path": seen.path, "headers": seen.headers,
                               "body": seen.body.decode(errors="replace")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def upstream_server(ca: TestCA | None) -> Iterator[Upstream]:
    """HTTPS when ``ca`` is given (its leaf certificate), else plain HTTP."""
    upstream = Upstream()
    server = _Server(("127.0.0.1", 0), _handler(upstream))
    if ca is not None:
        context = ca.server_context()
        server.socket = context.wrap_socket(server.socket, server_side=True)
    upstream.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- an upstream proxy stand-in ----------------------------------------------------------------------


@dataclass
class StandIn:
    """A corporate proxy stand-in: CONNECT <name>:<port> is tunnelled to 127.0.0.1:<routes[name]>
    (or the default port) — so the daemon can talk to api.github.com without any DNS or network."""

    default_port: int
    routes: dict[str, int] = field(default_factory=dict)
    port: int = 0
    connects: list[tuple[str, str | None]] = field(default_factory=list)  # (target, Proxy-Authorization)


def _stand_in_handler(stand_in: StandIn) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                         if line.lower().startswith("proxy-authorization:")), None)
            stand_in.connects.append((target, auth))
            if method != "CONNECT":
                sock.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            name = target.rsplit(":", 1)[0]
            with socket.create_connection(("127.0.0.1", stand_in.routes.get(name, stand_in.default_port))) as out:
                sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _pipe(sock, out)

    return Handler


def _pipe(a: socket.socket, b: socket.socket) -> None:
    peers = {a: b, b: a}
    while True:
        ready, _, _ = select.select(list(peers), [], [], 30)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def stand_in_proxy(default_port: int, routes: Mapping[str, int] | None = None) -> Iterator[StandIn]:
    stand_in = StandIn(default_port, dict(routes or {}))
    server = _TCPServer(("127.0.0.1", 0), _stand_in_handler(stand_in))
    stand_in.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the daemon --------------------------------------------------------------------------------------


def daemon_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any proxy settings of its own, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARIABLES}
    env.update(extra)
    return env


@contextmanager
def running_daemon(home: Path, *, idle: float = 0, env: Mapping[str, str] | None = None) -> Iterator[client.ProxyInfo]:
    """The real daemon for ``home``, ended (and checked gone) afterwards, by its pid if need be."""
    require_proxy_python()
    info = client.ensure_running(home, idle=idle, environ=env or daemon_env())
    try:
        yield info
    finally:
        end_daemon(home, info)


def end_daemon(home: Path, info: client.ProxyInfo) -> None:
    """Stop the daemon (killed if it will not go), and fail on any error it logged: mitmproxy logs
    an addon's exception and carries on, which no client would notice."""
    with suppress(ProxyError):
        client.stop(home, timeout=10)
    if process_alive(info.pid, None, info.pid_start):
        signal_process(info.pid, info.pid_start, 9)
        deadline = time.monotonic() + 5
        while process_alive(info.pid, None, info.pid_start) and time.monotonic() < deadline:
            time.sleep(0.05)
        pytest.fail(f"the proxy daemon {info.pid} did not stop when asked (killed)")
    log = info.paths.log.read_text(errors="replace") if info.paths.log.exists() else ""
    assert "Traceback" not in log and " ERROR " not in log, f"the daemon logged errors:\n{log}"


def registration(run_id: str, token: str, trace_file: Path | None, *grants: Any,
                 host_ports: tuple[int, ...] = ()) -> Registration:
    return Registration(run_id=run_id, token=token, grants=tuple(grants),
                        trace_file=str(trace_file) if trace_file else None, host_ports=host_ports)


# -- clients -----------------------------------------------------------------------------------------


def curl(info: client.ProxyInfo, token: str | None, url: str, *args: str, host: str | None = None,
         port: int | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """curl through the proxy (moat's CA trusted, nothing from the machine's own settings); its
    output has the newlines of text mode ("\\n", not "\\r\\n")."""
    proxy = info.url(token, host=host, port=port) if token else f"http://{host or info.host}:{port or info.port}"
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in (*PROXY_VARIABLES, "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), "--proxy", proxy, "--cacert",
                           str(info.ca_cert), *args, url], capture_output=True, text=True, env=env,
                          timeout=timeout + 10, check=False)


def proxy_auth(token: str) -> str:
    return "Basic " + base64.b64encode(f"moat:{token}".encode()).decode()


def tunnel(info: client.ProxyInfo, token: str | None, host: str, port: int = 443,
           timeout: float = 20) -> http.client.HTTPSConnection:
    """An HTTPS connection to ``host`` through the proxy (CONNECT), trusting moat's CA only."""
    context = ssl.create_default_context(cafile=str(info.ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", info.port, timeout=timeout, context=context)
    connection.set_tunnel(host, port, headers={"Proxy-Authorization": proxy_auth(token)} if token else None)
    return connection


def raw_connect(port: int, target: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send one CONNECT and read the answer: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status_line.split(" ")[1]), headers, body


def trace_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_trace(path: Path, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The trace is written when a response ends, a moment after the client has read it."""
    deadline = time.monotonic() + timeout
    while True:
        lines = trace_lines(path)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)
