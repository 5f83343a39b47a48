"""Strict network policy end to end, on Docker and on the sandbox: an agent that tries every way out.

The only way out of a strict run is moat's proxy, and the proxy applies the run's rules. The agent
tries the hosts its rules allow (answered), a host they do not (407 with moat's headers and the line
to add), a path they do not, raw TCP and UDP to listeners this test runs outside the pod — on the
host's loopback and on the host's side of a network this test creates — DNS, the host's ports (one
listed under network.host, one not), and its own service by name. Every escape fails; every allowed
path works. Every address tried is a listener this test runs on this machine; nothing else is tried.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moat.runtime.docker import DockerRuntime
from tests.e2e.test_grants import Internet, granted, internet  # noqa: F401 — fixtures
from tests.helpers import left_for, run_moat, runs, write_workspace

ESCAPE_LABEL = {"moat-test": "escape"}  # not a moat label: the leak check is about moat's own objects


@dataclass
class Listener:
    """A TCP or UDP listener outside the pod that counts whatever reaches it."""

    kind: str
    address: str
    sock: socket.socket
    hits: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def _listen(kind: str, address: str) -> Listener:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.bind((address, 0))
    if kind == "tcp":
        sock.listen(8)
    listener = Listener(kind, address, sock)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                if kind == "tcp":
                    conn, peer = sock.accept()
                    listener.hits.append(str(peer))
                    conn.close()
                else:
                    _, peer = sock.recvfrom(512)
                    listener.hits.append(str(peer))

    threading.Thread(target=serve, daemon=True).start()
    return listener


@dataclass
class Outside:
    gateway: str  # the host's side of a network this test created
    listeners: dict[str, Listener]

    def hits(self) -> dict[str, list[str]]:
        return {name: listener.hits for name, listener in self.listeners.items() if listener.hits}


@pytest.fixture
def outside(engine: DockerRuntime) -> Iterator[Outside]:
    """Listeners on the host's loopback and on the gateway of a bridge network made for this test."""
    network = engine.client.networks.create(f"moat-escape-{uuid.uuid4().hex[:8]}", driver="bridge",
                                            labels=ESCAPE_LABEL)
    try:
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        listeners = {f"{kind}-{where}": _listen(kind, address)
                     for kind in ("tcp", "udp") for where, address in (("loopback", "127.0.0.1"),
                                                                       ("gateway", gateway))}
        try:
            yield Outside(gateway, listeners)
        finally:
            for listener in listeners.values():
                listener.sock.close()
    finally:
        network.remove()


CONFIG = """\
name: strict-escape
dependencies: [curl, redis]
grants: [github]
services:
  redis:
    image: moat-test/redis:latest
network:
  policy: strict
  host: [{open_port}]
  rules:
    - api.example.test: ["allow GET /echo/**"]
"""

# Each line: NAME=result. Raw attempts are bash's /dev/tcp and /dev/udp, each bounded by `timeout`.
SCRIPT = r"""
echo "IFACES=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "ROUTES=$(tail -n +2 /proc/net/route | wc -l)"
echo "GRANTED=$(curl -s -o /dev/null -w '%{http_code}' https://api.github.com/user)"
echo "ALLOWED=$(curl -s -o /dev/null -w '%{http_code}' https://api.example.test/echo/fine)"
echo "DENIED_PATH=$(curl -s -o /dev/null -w '%{http_code}' -X POST https://api.example.test/echo/fine)"
echo "DENIED_OTHER_PATH=$(curl -s -o /dev/null -w '%{http_code}' https://api.example.test/admin)"
echo "DENIED_HOST=$(curl -s -o /dev/null -w '%{http_connect}' https://api.anthropic.com/v1/messages)"
curl -s -i http://api.anthropic.com/v1/messages > /tmp/denied.txt; sed 's/^/DENIED_BODY: /' /tmp/denied.txt
echo "NOPROXY=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 \
  https://api.example.test/echo/x || true)"
for target in $TCP_TARGETS; do
  host=${target%:*}; port=${target#*:}
  if timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
  then echo "TCP $target=open"; else echo "TCP $target=closed"; fi
done
for target in $UDP_TARGETS; do
  host=${target%:*}; port=${target#*:}
  if timeout 5 bash -c "echo escape > /dev/udp/$host/$port" 2>/dev/null
  then echo "UDP $target=sent"; else echo "UDP $target=unsent"; fi
done
echo "HOST_OPEN=$(curl -s -o /dev/null -w '%{http_code}' http://moat-host:$OPEN_PORT/echo/host)"
echo "HOST_CLOSED=$(curl -s -D - -o /dev/null http://moat-host:$CLOSED_PORT/ | tr -d '\r' \
  | grep -i -e '^HTTP' -e '^x-moat-blocked' | tr '\n' ' ')"
exec 3<>/dev/tcp/redis/6379 && printf 'AUTH %s\r\nPING\r\n' "$MOAT_REDIS_PASSWORD" >&3 && \
  echo "REDIS=$(timeout 5 head -c 12 <&3 | tr -d '\r\n')"
echo "CONTEXT=$(grep -c 'strict' "$MOAT_CONTEXT")"
"""


def _results(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("DENIED_BODY"):
            out[key] = value.strip()
    return out


@pytest.mark.parametrize("runtime", ["docker", "sandbox"])
def test_a_strict_agent_gets_out_only_through_the_proxy_and_only_where_allowed(
        request: pytest.FixtureRequest, granted: Path, tmp_path: Path, internet: Internet,  # noqa: F811
        outside: Outside, runtime: str) -> None:
    if runtime == "sandbox":
        request.getfixturevalue("sandbox")
    closed = outside.listeners["tcp-loopback"].port  # a host port the run does not list
    open_port = internet.plain.port
    workspace = write_workspace(tmp_path / "ws", CONFIG.format(open_port=open_port))
    tcp = " ".join(f"{listener.address}:{listener.port}" for listener in outside.listeners.values()
                   if listener.kind == "tcp") + f" 127.0.0.1:{open_port}"
    udp = " ".join(f"{listener.address}:{listener.port}" for listener in outside.listeners.values()
                   if listener.kind == "udp")
    env = {**internet.env}
    result = run_moat(["run", "--runtime", runtime, str(workspace),
                       "-e", f"TCP_TARGETS={tcp}", "-e", f"UDP_TARGETS={udp}",
                       "-e", f"OPEN_PORT={open_port}", "-e", f"CLOSED_PORT={closed}",
                       "--", "bash", "-c", SCRIPT], env=env)
    assert result.code == 0, result.output
    got = _results(result.stdout)
    # Nothing but loopback, no route.
    assert got["IFACES"] == "lo" and got["ROUTES"] == "0", got
    # Allowed: the grant's host (strict mode admits it), the listed host on its allowed path.
    assert got["GRANTED"] == "200" and got["ALLOWED"] == "200", got
    # Refused by the rules: another method, another path, another host.
    assert got["DENIED_PATH"] == "407" and got["DENIED_OTHER_PATH"] == "407", got
    assert got["DENIED_HOST"] == "407", got
    body = "\n".join(line.removeprefix("DENIED_BODY: ") for line in result.stdout.splitlines()
                     if line.startswith("DENIED_BODY: "))
    assert "407" in body.splitlines()[0]
    assert "X-Moat-Blocked: request-rule" in body and "Proxy-Authenticate: Moat-Policy" in body
    assert 'Host "api.anthropic.com" is not in the allow list' in body
    assert "- api.anthropic.com" in body  # the moat.yaml line to add
    # Around the proxy: nothing answers.
    assert got["NOPROXY"] in ("000", ""), got
    for name, value in got.items():
        if name.startswith("TCP "):
            assert value == "closed", (name, value)
    assert outside.hits() == {}, outside.hits()  # not one connection, not one datagram arrived
    # The host's ports: the listed one through the proxy, the other refused as a host service.
    assert got["HOST_OPEN"] == "200", got
    assert "407" in got["HOST_CLOSED"] and "host-service" in got["HOST_CLOSED"].lower(), got
    assert [r.path for r in internet.plain.seen] == ["/echo/host"]  # nothing else reached it
    # Its own service, by name, on loopback.
    assert got["REDIS"].startswith("+OK+PONG"), got
    assert int(got["CONTEXT"]) >= 1
    # Blocked requests are in the trace, marked.
    [run] = runs(granted)
    records = json.loads(run_moat(["trace", "--network", "--json", run["id"]]).stdout)
    blocked = [r for r in records if r.get("blocked")]
    assert any("api.anthropic.com" in r["url"] for r in blocked), blocked
    assert any("/admin" in r["url"] for r in blocked), blocked
    assert not any(host.startswith("api.anthropic.com") for host in internet.hosts)  # never left moat's proxy
    shown = run_moat(["trace", "--network", run["id"]]).stdout
    assert "blocked" in shown.lower()


def test_strict_docker_dns_fails_at_once_on_loopback(engine: DockerRuntime, granted: Path,  # noqa: F811
                                                     tmp_path: Path, internet: Internet) -> None:  # noqa: F811
    """The pod's resolver is its own loopback, where nothing answers: a lookup fails without a query
    ever leaving (the proxy resolves for the agent)."""
    workspace = write_workspace(tmp_path / "ws", "dependencies: [curl]\nnetwork:\n  policy: strict\n")
    result = run_moat(["run", str(workspace), "--", "sh", "-c",
                       "grep nameserver /etc/resolv.conf; getent hosts api.github.com || echo NO_ANSWER"],
                      env=internet.env)
    assert result.code == 0, result.output
    assert "nameserver 127.0.0.1" in result.stdout and "NO_ANSWER" in result.stdout
    [run] = runs(granted)
    assert left_for(engine, run["id"]) == []


def test_a_rule_that_does_not_parse_stops_the_run_before_anything_starts(moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "network:\n  policy: strict\n  rules:\n"
                                                 "    - api.github.com: ['alow GET /repos/**']\n")
    result = run_moat(["run", str(workspace), "--", "true"])
    assert result.code == 2, result.output
    assert "moat.yaml:4" in result.stderr and "did you mean 'allow'?" in result.stderr
    assert "Traceback" not in result.stderr and not (moat_home / "runs").exists()
    bad_host = run_moat(["run", "--allow-host", "https://x.example", str(workspace), "--", "true"])
    assert bad_host.code == 2 and "moat.yaml:4" in bad_host.stderr  # the file's problem is found first
    fixed = write_workspace(tmp_path / "ws", "network:\n  policy: strict\n")
    bad_host = run_moat(["run", "--allow-host", "https://x.example", str(fixed), "--dry-run"])
    assert bad_host.code == 2 and "--allow-host 'https://x.example'" in bad_host.stderr, bad_host.output
    assert not (moat_home / "runs").exists()
