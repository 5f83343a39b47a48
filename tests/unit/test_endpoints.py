"""moat.yaml's ports: the plan (URLs, MOAT_URL_*, the holder's forwarders), the route table (one run
per host name; a dead run's route dropped), and the routing proxy itself, in-process, against an
upstream on a Unix socket of the test's own: TLS with moat's CA, plain HTTP, index pages, 404, 502."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.errors import UsageError
from moat.files import write_private
from moat.ownership import process_start
from moat.plan.endpoints import host_label, routing_port
from moat.run.router import Router, _host_and_accept
from moat.run.routes import Route, RouteTable
from tests.unit.support import only_problem, plan_for
from tests.upstream import read_head

PORTS = "name: My App\nports:\n  web: 3000\n  api-v2: 8080\n"
REAL_CONNECT = socket.socket.connect  # taken before the unit tier's guard is set


def test_the_plan_tells_the_agent_its_urls_and_the_holder_forwards_each_port() -> None:
    plan = plan_for(PORTS, runtime="docker", host_env={"MOAT_PROXY_PORT": "9443"})
    endpoints = plan.endpoints
    assert endpoints is not None and endpoints.host == "my-app" and endpoints.port == 9443
    assert plan.env["MOAT_URL_WEB"] == "https://web.my-app.localhost:9443"
    assert plan.env["MOAT_URL_API_V2"] == "https://api-v2.my-app.localhost:9443"
    holder = plan.holder
    assert holder is not None and holder.image.startswith("moat/pod:")  # socat's image, even when permissive
    script = holder.command[-1] if holder.command else ""
    assert "socat UNIX-LISTEN:/run/moat-ports/web.sock,fork,unlink-early,mode=600 TCP:127.0.0.1:3000 &" in script
    assert "TCP:127.0.0.1:8080" in script and script.endswith("exec sleep infinity")
    assert any(m.target == "/run/moat-ports" and m.source == str(endpoints.sockets) for m in holder.mounts)
    strict = plan_for(PORTS + "network: {policy: strict}\n", runtime="docker",
                      proxy_ca=Path("/nonexistent/moat-ca.crt")).holder
    assert strict is not None and strict.network == "none"
    assert strict.command is not None and "exec socat -d -d TCP-LISTEN" in strict.command[-1]
    assert plan_for("", runtime="docker").endpoints is None


def test_what_ports_cannot_be() -> None:
    where, message, _, _ = only_problem("ports: {Web_UI: 3000}\n")
    assert where == "ports.Web_UI" and "host name's label" in message
    sandboxed = plan_for(PORTS, runtime="sandbox")  # moat's relay forwards them there
    assert sandboxed.forwarder is not None and sandboxed.holder is None
    assert sandboxed.forwarder.command == ("--forward", "/run/moat-ports/api-v2.sock=127.0.0.1:8080",
                                           "--forward", "/run/moat-ports/web.sock=127.0.0.1:3000")
    with pytest.raises(UsageError, match="MOAT_PROXY_PORT"):
        routing_port({"MOAT_PROXY_PORT": "http"})
    assert routing_port({}) == 8080


@pytest.mark.parametrize(("name", "label"), [("my-app", "my-app"), ("My App", "my-app"),
                                             ("proj-feature/x", "proj-feature-x"), ("__", "run-0123456789ab"),
                                             ("é", "run-0123456789ab")])
def test_a_runs_name_becomes_a_dns_label(name: str, label: str) -> None:
    assert host_label(name, "run_0123456789ab") == label


def _active_run(home: Path, run_id: str) -> None:
    pid = os.getpid()
    (home / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    write_private(home / "runs" / run_id / "metadata.json",
                  json.dumps({"id": run_id, "name": "x", "state": "running", "pid": pid,
                              "pid_start": process_start(pid) or ""}))


def test_one_active_run_per_host_name(tmp_path: Path) -> None:
    table = RouteTable(tmp_path)
    _active_run(tmp_path, "run_000000000001")
    table.add(Route("run_000000000001", "app", "app", {"web": (3000, "/x.sock")}))
    with pytest.raises(UsageError, match=r"already answers at app\.localhost"):
        table.add(Route("run_000000000002", "app", "app", {"web": (3000, "/y.sock")}))
    assert [r.run_id for r in table.routes()] == ["run_000000000001"]
    # A route whose run is no longer active is dropped on sight, and its name is free again.
    (tmp_path / "runs" / "run_000000000001" / "metadata.json").write_text(json.dumps({"state": "exited"}))
    assert table.routes() == [] and not (tmp_path / "routes" / "run_000000000001.json").exists()
    _active_run(tmp_path, "run_000000000002")
    table.add(Route("run_000000000002", "app", "app", {"web": (3000, "/y.sock")}))
    table.remove("run_000000000002")
    assert table.routes() == []


def test_the_agent_gets_one_request_per_connection() -> None:
    from moat.run.router import _one_request

    head = b"GET / HTTP/1.1\r\nHost: web.a.localhost\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n"
    assert _one_request(head) == b"GET / HTTP/1.1\r\nHost: web.a.localhost\r\nConnection: close\r\n\r\n"
    upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert _one_request(upgrade) == upgrade


def test_the_request_head_names_the_host() -> None:
    assert _host_and_accept(b"GET / HTTP/1.1\r\nHost: Web.App.localhost:8080\r\nAccept: application/json\r\n\r\n") == (
        "web.app.localhost", True)
    assert _host_and_accept(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n") == ("localhost", False)


# --- the routing proxy, in-process ------------------------------------------------------------------


class _Upstream:
    """A tiny HTTP server on a Unix socket: what the pod's holder forwards to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.heads: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                head = read_head(conn)
                line = head.split(b"\r\n", 1)[0].decode()
                self.heads.append(head)
                body = f"upstream saw {line}\n".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


@pytest.fixture
def routed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path]]:
    home = tmp_path / "home"
    _active_run(home, "run_00000000000a")
    # Short: a Unix socket's path has at most 107 bytes.
    sockets = Path(tempfile.mkdtemp(prefix="moat-unit-"))
    # The unit tier refuses every Unix socket (the engine's): this test's own upstream's, it allows.
    guarded = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_UNIX and str(address).startswith(str(sockets)):
            return REAL_CONNECT(self, address)  # type: ignore[arg-type]
        return guarded(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    _Upstream(sockets / "web.sock")
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(sockets / "mute.sock"))
    mute.listen(8)

    def hang_up() -> None:
        while True:
            try:
                conn, _ = mute.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    RouteTable(home).add(Route("run_00000000000a", "shop", "shop", {"web": (3000, str(sockets / "web.sock")),
                                                                     "gone": (4000, str(sockets / "gone.sock")),
                                                                     "mute": (5000, str(sockets / "mute.sock"))}))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    router = Router(home, port, idle=3600)
    loop = asyncio.new_event_loop()
    def serve() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # how the test ends it
            loop.run_until_complete(router.serve(listener))
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, home
    loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
    thread.join(5)
    router.certificates.close()
    listener.close()
    for path in sockets.iterdir():
        path.unlink()
    sockets.rmdir()


def _fetch(port: int, host: str, *, tls: Path | None, accept: str = "*/*") -> tuple[int, str]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn: socket.socket = raw
    if tls is not None:
        context = ssl.create_default_context(cafile=str(tls))
        conn = context.wrap_socket(raw, server_hostname=host)
    with conn:
        conn.sendall(f"GET /path HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {accept}\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_the_router_reaches_an_endpoint_over_tls_and_plain_http(routed: tuple[int, Path]) -> None:
    port, home = routed
    ca = home / "proxy" / "ca" / "moat-ca.crt"
    assert _fetch(port, "web.shop.localhost", tls=ca) == (200, "upstream saw GET /path HTTP/1.1\n")
    assert _fetch(port, "web.shop.localhost", tls=None) == (200, "upstream saw GET /path HTTP/1.1\n")
    status, body = _fetch(port, "localhost", tls=ca, accept="application/json")
    [agent] = json.loads(body)["agents"]
    assert status == 200 and agent["name"] == "shop"
    assert {e["url"] for e in agent["endpoints"]} == {f"https://{e}.shop.localhost:{port}"
                                                      for e in ("web", "gone", "mute")}
    status, page = _fetch(port, "shop.localhost", tls=ca)  # two endpoints: the run's index
    assert status == 200 and "<a href=" in page
    assert _fetch(port, "nope.localhost", tls=None)[0] == 404
    with pytest.raises(ssl.SSLCertVerificationError):  # no certificate is made for a name no run has
        _fetch(port, "nope.localhost", tls=ca)
    status, _ = _fetch(port, "127.0.0.1", tls=ca, accept="application/json")  # an IP address SAN
    assert status == 200
    assert _fetch(port, "other.shop.localhost", tls=ca)[0] == 404
    status, body = _fetch(port, "gone.shop.localhost", tls=ca)
    assert status == 502 and "port 4000" in body
    status, body = _fetch(port, "mute.shop.localhost", tls=ca)  # a socket that closes without a word
    assert status == 502 and "without an answer" in body
    with pytest.raises(ssl.SSLCertVerificationError):  # a certificate for the name asked, and no other
        ctx = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="example.com"):
            pass


@pytest.mark.parametrize(("text", "where"), [("ports: {web: true}\n", "ports.web"),
                                             ("network: {host: [false]}\n", "network.host[0]")])
def test_true_is_no_port(text: str, where: str) -> None:
    dotted, message, line, _ = only_problem(text)
    assert dotted == where and "expected a port number" in message and line == 1
