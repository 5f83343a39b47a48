"""Local stand-ins for the internet, for the proxy's tests (nothing here ever reaches another host).

- ``make_ca``: a certificate authority made for the test, and a server certificate it signs for
  every name the tests use (``api.github.com``, ``github.com``, …, and 127.0.0.1).
- ``upstream_server``: an HTTPS (or plain-HTTP) server on 127.0.0.1 standing in for those hosts. It
  records every request (``Seen``) and answers: ``/echo…`` the request as JSON, ``/sse`` an event
  stream, ``/bytes/<n>`` n bytes, ``/git/<repo>.git/…`` git's smart HTTP (``git http-backend``).
- ``stand_in_proxy``: the "corporate upstream proxy" moat's proxy is told about in its own
  environment (``HTTPS_PROXY``): a CONNECT to any name goes to a local upstream (like a DNS override);
  a tunnel to port 80 goes to the plain-HTTP one. It records what it was asked for.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

UPSTREAM_NAMES = ("api.github.com", "github.com", "api.anthropic.com", "api.openai.com",
                  "generativelanguage.googleapis.com", "api.githubcopilot.com",
                  "api.individual.githubcopilot.com", "api.telegram.org", "api.example.test",
                  "untrusted.test", "moat-host", "localhost")


# -- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    __test__ = False  # a helper, not a test class

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
    /git/<repo>… → git's smart HTTP for the bare repositories under ``git_root``
    """

    port: int = 0
    git_root: Path | None = None
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
            if self.path.startswith("/git/") and upstream.git_root is not None:
                self._git(seen)
                return
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

        def _git(self, seen: Seen) -> None:
            path, _, query = seen.path[len("/git"):].partition("?")
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(upstream.git_root),
                   "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
                   "REQUEST_METHOD": seen.method, "CONTENT_TYPE": seen.header("Content-Type") or "",
                   "CONTENT_LENGTH": str(len(seen.body)), "REMOTE_USER": "moat-test",
                   "HTTP_CONTENT_ENCODING": seen.header("Content-Encoding") or "",
                   "GIT_PROTOCOL": seen.header("Git-Protocol") or "",
                   "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
            done = subprocess.run(["git", "http-backend"], input=seen.body, env=env, capture_output=True,
                                  check=False, timeout=60)
            head, _, body = done.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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
def upstream_server(ca: TestCA | None, git_root: Path | None = None) -> Iterator[Upstream]:
    """HTTPS when ``ca`` is given (its leaf certificate), else plain HTTP."""
    upstream = Upstream(git_root=git_root)
    server = _Server(("127.0.0.1", 0), _handler(upstream))
    if ca is not None:
        context = ca.server_context()
        server.socket = context.wrap_socket(server.socket, server_side=True)
    upstream.port = server.server_address[1]
    with serving(server):
        try:
            yield upstream
        finally:
            upstream.gate.set()  # an event stream still waiting must not hold the shutdown


# -- an upstream proxy stand-in ----------------------------------------------------------------------


@dataclass
class StandIn:
    """A corporate proxy stand-in: CONNECT <name>:<port> is tunnelled to 127.0.0.1:<routes[name]>
    (or the default port) — so the daemon can talk to api.github.com without any DNS or network."""

    default_port: int
    routes: dict[str, int] = field(default_factory=dict)
    plain_port: int | None = None  # where a tunnel to port 80 goes (a plain-HTTP upstream)
    port: int = 0
    connects: list[tuple[str, str | None]] = field(default_factory=list)  # (target, Proxy-Authorization)


def read_head(sock: socket.socket) -> bytes:
    """What the peer sent up to the end of its request's or answer's head (and whatever came with it);
    less, without the blank line, if it closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _stand_in_handler(stand_in: StandIn) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            head = read_head(sock)
            if b"\r\n\r\n" not in head:
                return
            lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                         if line.lower().startswith("proxy-authorization:")), None)
            stand_in.connects.append((target, auth))
            if method != "CONNECT":
                sock.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            name, _, port = target.rpartition(":")
            where = stand_in.routes.get(name, stand_in.default_port)
            if port == "80" and stand_in.plain_port is not None and name not in stand_in.routes:
                where = stand_in.plain_port  # a proxy may tunnel plain HTTP too
            with socket.create_connection(("127.0.0.1", where)) as out:
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
def stand_in_proxy(default_port: int, routes: Mapping[str, int] | None = None,
                   plain_port: int | None = None) -> Iterator[StandIn]:
    stand_in = StandIn(default_port, dict(routes or {}), plain_port)
    server = _TCPServer(("127.0.0.1", 0), _stand_in_handler(stand_in))
    stand_in.port = server.server_address[1]
    with serving(server):
        yield stand_in


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """``server`` answering in a thread of its own, and shut down and closed after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)




@contextmanager
def git_http_server(root: Path) -> Iterator[tuple[int, list[str]]]:
    """The repositories under ``root`` served over git's smart HTTP protocol (``git http-backend``,
    as a forge serves them; shallow clones need it) on 127.0.0.1. Yields the port and the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._backend()

        def do_POST(self) -> None:
            self._backend()

        def _backend(self) -> None:
            asked.append(self.path)
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(root),
                   "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
                   "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                   "CONTENT_LENGTH": str(length), "REMOTE_ADDR": "127.0.0.1"}
            done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server):
        yield server.server_address[1], asked
