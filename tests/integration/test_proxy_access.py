"""The real proxy keeps an agent off the host it runs on — every name and address of it — except
the ports a run lists, reached as moat-host:<port>; and it serves on other local addresses, its
Unix socket and the relay.

No upstream proxy here: the daemon connects directly, so its checks of resolved addresses are the
ones in play. The only names resolved are this machine's own (/etc/hosts).
"""

from __future__ import annotations

import fcntl
import secrets
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moat.credentials.rules import GrantRules, HeaderInjection
from moat.proxy import client
from moat.proxy.errors import ProxyError
from tests.integration.proxy_support import (
    Upstream,
    curl,
    daemon_env,
    make_ca,
    proxy_auth,
    raw_connect,
    registration,
    require_curl,
    running_daemon,
    tunnel,
    upstream_server,
    wait_for_trace,
)

SIOCGIFADDR = 0x8915


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 interface addresses other than loopback (bridges, LAN)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                found.append(address)
    return found


@dataclass
class Host:
    home: Path
    info: client.ProxyInfo
    https: Upstream
    plain: Upstream
    token: str
    secret: str
    trace: Path


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    require_curl()
    tmp = tmp_path_factory.mktemp("proxy-access")
    ca = make_ca(tmp / "ca")
    with upstream_server(ca) as https, upstream_server(None) as plain:
        env = daemon_env(SSL_CERT_FILE=str(ca.cert_file))
        with running_daemon(tmp / "home", env=env) as info:
            token, secret = secrets.token_hex(32), secrets.token_hex(16)
            grant = GrantRules("local", injections=(HeaderInjection(("moat-host",), (("X-Key", secret),)),))
            trace = tmp / "home" / "runs" / "run_host" / "network.jsonl"  # the only trace a run may have
            trace.parent.mkdir(parents=True)
            client.register(tmp / "home", registration("run_host", token, trace, grant,
                                                       host_ports=(https.port, plain.port)))
            yield Host(tmp / "home", info, https, plain, token, secret, trace)


def refused_targets(port: int) -> list[str]:
    names = ["127.0.0.1", "localhost", "[::1]", "0.0.0.0", "[::ffff:127.0.0.1]", "127.1.2.3", "169.254.169.254"]
    hostname = socket.gethostname()
    if socket.gethostbyname(hostname).startswith("127."):
        names.append(hostname)  # a name that resolves to loopback, not by its spelling
    names += local_ipv4_addresses()
    return [f"http://{name}:{port}/echo/refused" for name in names]


def test_the_hosts_own_addresses_are_refused_by_name_and_by_address(host: Host) -> None:
    targets = refused_targets(host.plain.port)
    for url in targets:
        result = curl(host.info, host.token, url, "-i")
        head, _, body = result.stdout.partition("\n\n")
        assert head.startswith("HTTP/1.1 407"), (url, result.stdout, result.stderr)
        assert "X-Moat-Blocked: host-address" in head
        assert "may not reach the host moat runs on" in body
    assert not [s for s in host.plain.seen if s.path == "/echo/refused"]
    lines = wait_for_trace(host.trace, len(targets))
    assert all(line["blocked"] and line["status_code"] == 407 for line in lines[-len(targets):])


def test_a_tunnel_to_the_host_is_refused(host: Host) -> None:
    for target in (f"127.0.0.1:{host.https.port}", f"localhost:{host.https.port}", "169.254.169.254:443"):
        status, headers, body = raw_connect(host.info.port, target, proxy_auth(host.token))
        assert b"may not reach the host" in body
        assert status == 407, target
        assert headers["x-moat-blocked"] == "host-address"


def test_moat_host_reaches_the_listed_ports_with_grants(host: Host) -> None:
    result = curl(host.info, host.token, f"http://moat-host:{host.plain.port}/echo/mapped")
    assert result.returncode == 0, result.stderr
    seen = [s for s in host.plain.seen if s.path == "/echo/mapped"][-1]
    assert seen.header("X-Key") == host.secret
    assert seen.header("Host") == f"moat-host:{host.plain.port}"  # as the agent sent it
    result = curl(host.info, host.token, f"https://moat-host:{host.https.port}/echo/mapped-tls")
    assert result.returncode == 0, result.stderr
    assert [s for s in host.https.seen if s.path == "/echo/mapped-tls"][-1].header("X-Key") == host.secret


def test_a_kept_alive_connection_to_moat_host_is_reused(host: Host) -> None:
    """The proxy connects to the address it checked, then lets the connection be found by its name
    again: five requests on one tunnel make one connection upstream."""
    connection = tunnel(host.info, host.token, "moat-host", host.https.port)
    for n in range(5):
        connection.request("GET", f"/echo/reuse/{n}")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    connection.close()
    ports = {s.client_port for s in host.https.seen if s.path.startswith("/echo/reuse/")}
    assert len(ports) == 1


def test_a_tunnel_to_moat_host_carries_any_protocol_even_server_first(host: Host) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        trace = host.home / "runs" / "run_tcp" / "network.jsonl"
        trace.parent.mkdir(parents=True, exist_ok=True)
        client.register(host.home, registration("run_tcp", host.token + "tcp", trace, host_ports=(port,)))
        try:
            with socket.create_connection(("127.0.0.1", host.info.port), timeout=10) as sock:
                sock.sendall(f"CONNECT moat-host:{port} HTTP/1.1\r\n"
                             f"Proxy-Authorization: {proxy_auth(host.token + 'tcp')}\r\n\r\n".encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                accepted, _ = server.accept()
                with accepted:
                    accepted.sendall(b"220 greeting from the server\r\n")  # MySQL and SMTP speak first
                    assert sock.recv(4096) == b"220 greeting from the server\r\n"
                    sock.sendall(b"QUIT\r\n")
                    assert accepted.recv(4096) == b"QUIT\r\n"
            # What went through is in the run's trace, though none of it was HTTP.
            [line] = [r for r in wait_for_trace(trace, 1) if r["method"] == "TCP"]
            assert line["url"] == f"moat-host:{port}" and (line["req_bytes"], line["resp_bytes"]) == (6, 30)
        finally:
            client.unregister(host.home, "run_tcp")


def test_a_grant_for_one_of_the_hosts_ports_reaches_that_port_alone(host: Host) -> None:
    """claude.base_url's endpoint on this machine: its grant names moat-host:<its port>, and another
    listed port of the host (a dev server, a tunnel) never gets the credential."""
    token, key = secrets.token_hex(32), secrets.token_hex(16)
    grant = GrantRules("endpoint", injections=(HeaderInjection((f"moat-host:{host.plain.port}",),
                                                               (("X-Endpoint-Key", key),)),))
    trace = host.home / "runs" / "run_port" / "network.jsonl"
    trace.parent.mkdir(parents=True, exist_ok=True)
    client.register(host.home, registration("run_port", token, trace, grant,
                                            host_ports=(host.https.port, host.plain.port)))
    try:
        assert curl(host.info, token, f"http://moat-host:{host.plain.port}/echo/its-port").returncode == 0
        assert [s for s in host.plain.seen if s.path == "/echo/its-port"][-1].header("X-Endpoint-Key") == key
        assert curl(host.info, token, f"https://moat-host:{host.https.port}/echo/other-port").returncode == 0
        assert [s for s in host.https.seen if s.path == "/echo/other-port"][-1].header("X-Endpoint-Key") is None
    finally:
        client.unregister(host.home, "run_port")


def test_moat_host_refuses_ports_not_listed(host: Host) -> None:
    with socket.socket() as spare:  # a port nobody listed (nor listens on)
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    result = curl(host.info, host.token, f"http://moat-host:{port}/", "-i")
    assert result.stdout.startswith("HTTP/1.1 407")
    assert "X-Moat-Blocked: host-service" in result.stdout
    assert f"      - {port}" in result.stdout  # the moat.yaml lines that would allow it
    status, headers, _ = raw_connect(host.info.port, f"moat-host:{port}", proxy_auth(host.token))
    assert (status, headers["x-moat-blocked"]) == (407, "host-service")


def test_a_request_in_an_allowed_tunnel_goes_where_the_tunnel_goes(host: Host) -> None:
    """The destination is the CONNECT's, whatever Host header the request inside names."""
    connection = tunnel(host.info, host.token, "moat-host", host.https.port)
    connection.request("GET", "/echo/spoof", headers={"Host": f"localhost:{host.plain.port}"})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200
    assert [s.header("Host") for s in host.https.seen if s.path == "/echo/spoof"] == [f"localhost:{host.plain.port}"]
    assert not [s for s in host.plain.seen if s.path == "/echo/spoof"]


def test_the_proxy_listens_on_other_local_addresses_when_asked(host: Host) -> None:
    port = client.listen(host.home, "127.0.0.2")
    assert port != host.info.port
    assert client.listen(host.home, "127.0.0.2") == port  # once per address
    result = curl(host.info, host.token, f"http://moat-host:{host.plain.port}/echo/second", host="127.0.0.2",
                  port=port)
    assert result.returncode == 0, result.stderr
    assert client.status(host.home).listeners["127.0.0.2"] == port  # type: ignore[union-attr]
    with pytest.raises(ProxyError, match="not an address of this machine"):
        client.listen(host.home, "203.0.113.9")
    with pytest.raises(ProxyError, match="not an IP address"):
        client.listen(host.home, "example.com")


def test_the_relay_brings_the_unix_socket_to_a_port(host: Host) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    relay = subprocess.Popen([sys.executable, "-m", "moat.proxy.relay", "--listen", f"127.0.0.1:{port}",
                              "--to", str(host.info.proxy_socket)], stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None
        assert relay.stdout.readline().strip() == "ready"
        result = curl(host.info, host.token, f"http://moat-host:{host.plain.port}/echo/relayed", port=port)
        assert result.returncode == 0, result.stderr
        assert [s for s in host.plain.seen if s.path == "/echo/relayed"][-1].header("X-Key") == host.secret
        result = curl(host.info, host.token, f"https://moat-host:{host.https.port}/echo/relayed-tls", port=port)
        assert result.returncode == 0, result.stderr
        assert curl(host.info, "wrong-token-0123456789", "http://moat-host:1/", "-i",
                    port=port).stdout.startswith("HTTP/1.1 407")
    finally:
        relay.terminate()
        assert relay.wait(10) == 0


def test_files_and_sockets_are_private_but_the_proxy_socket(host: Host) -> None:
    proxy_dir = host.home / "proxy"
    assert stat.S_IMODE(proxy_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((proxy_dir / "control.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE((proxy_dir / "relay").stat().st_mode) == 0o700  # mounted alone into a strict pod
    assert stat.S_IMODE((proxy_dir / "relay" / "proxy.sock").stat().st_mode) == 0o666  # the token guards it
    assert stat.S_IMODE((proxy_dir / "daemon.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((proxy_dir / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((proxy_dir / "ca" / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(host.info.ca_cert.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" not in host.info.ca_cert.read_bytes()
