"""Local stand-ins for the internet, for the proxy's tests (nothing here ever reaches another host).

- ``TestCA``: a certificate authority made for the test, and a server certificate it signs for the
  names the tests use (``api.github.com``, ``github.com``, …).
- ``Upstream``: an HTTPS and a plain-HTTP server on 127.0.0.1 standing in for those hosts. It records
  every request it receives (method, path, headers, body) and answers JSON; paths under ``/git/``
  are served by ``git http-backend`` (git's smart HTTP), and ``/events`` streams server-sent events.
- ``ConnectStandIn``: the "corporate upstream proxy" moat's proxy is told about through its
  ``HTTPS_PROXY``/``HTTP_PROXY`` environment: every CONNECT, whatever host it names, goes to the
  local ``Upstream`` (like a DNS override), and every plain-HTTP request to its HTTP port. It records
  the hosts it was asked for.
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
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = ("api.github.com", "github.com", "api.telegram.org", "api.example.test", "localhost")


class TestCA:
    """A CA and one server certificate for ``NAMES`` (and 127.0.0.1), written under ``directory``."""

    __test__ = False  # a helper, not a test class

    def __init__(self, directory: Path, names: tuple[str, ...] = NAMES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moat tests' upstream CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                           crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_file = directory / "upstream-ca.crt"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file = directory / "upstream.crt"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file = directory / "upstream.key"
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    tls: bool


@dataclass
class Upstream:
    ca: TestCA
    git_root: Path | None = None  # repositories served under /git/<name>.git
    requests: list[Seen] = field(default_factory=list)
    https_port: int = 0
    http_port: int = 0
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def start(self) -> Upstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> Seen:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers: dict[str, str] = {}
                for name, value in self.headers.items():
                    key = name.lower()
                    headers[key] = f"{headers[key]}, {value}" if key in headers else value
                seen = Seen(self.command, self.path, headers, body, isinstance(self.connection, ssl.SSLSocket))
                upstream.requests.append(seen)
                return seen

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                seen = self._record()
                path = seen.path.split("://", 1)[-1].split("/", 1)[-1] if "://" in seen.path else seen.path[1:]
                if path.startswith("git/") and upstream.git_root is not None:
                    self._git(path[len("git"):], seen)
                elif path.startswith("events"):
                    self._events()
                else:
                    self._answer(200, json.dumps({"path": seen.path, "method": seen.method}).encode())

            def _events(self) -> None:
                """Three events, 0.3 s apart: a proxy that buffers delivers them all at once."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for index in range(3):
                    self.wfile.write(f"data: {index} {time.time():.3f}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.3)
                self.close_connection = True

            def _git(self, path: str, seen: Seen) -> None:
                query = path.partition("?")[2]
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(upstream.git_root),
                       "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path.partition("?")[0], "QUERY_STRING": query,
                       "REQUEST_METHOD": seen.method, "CONTENT_TYPE": seen.headers.get("content-type", ""),
                       "CONTENT_LENGTH": str(len(seen.body)), "REMOTE_USER": "moat-test",
                       "HTTP_CONTENT_ENCODING": seen.headers.get("content-encoding", ""),
                       "GIT_PROTOCOL": seen.headers.get("git-protocol", ""),
                       "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
                done = subprocess.run(["git", "http-backend"], input=seen.body, env=env, capture_output=True,
                                      check=False, timeout=60)
                head, _, body = done.stdout.partition(b"\r\n\r\n")
                status = 200
                headers = []
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

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca.cert_file, self.ca.key_file)
        https = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        https.socket = context.wrap_socket(https.socket, server_side=True)
        http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        for server in (https, http):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name="upstream", daemon=True).start()
            self._servers.append(server)
        self.https_port, self.http_port = https.server_address[1], http.server_address[1]
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def seen(self, path_part: str) -> list[Seen]:
        return [r for r in self.requests if path_part in r.path]


class ConnectStandIn:
    """An upstream HTTP proxy that sends everything to the local ``Upstream``."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.hosts: list[str] = []  # what each CONNECT or request named
        stand_in = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                first = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target, _ = first.split(" ", 2)
                if method == "CONNECT":
                    stand_in.hosts.append(target)
                    # A tunnel to port 80 carries plain HTTP (a proxy may tunnel it too); anything else TLS.
                    port = stand_in.upstream.http_port if target.endswith(":80") else stand_in.upstream.https_port
                    server = socket.create_connection(("127.0.0.1", port))
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    rest = head.split(b"\r\n\r\n", 1)[1]
                else:  # absolute form: http://host/path
                    stand_in.hosts.append(target.split("/")[2] if "://" in target else target)
                    server = socket.create_connection(("127.0.0.1", stand_in.upstream.http_port))
                    rest = head
                if rest:
                    server.sendall(rest)
                _pump(client, server)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="connect-stand-in", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pump(one: socket.socket, other: socket.socket) -> None:
    sockets = [one, other]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 60)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (other if sock is one else one).sendall(data)
    except OSError:
        return
    finally:
        for sock in sockets:
            sock.close()
