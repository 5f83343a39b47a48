"""What every contender in the start-up benchmark starts, and how readiness is seen from outside.

The same three services (postgres, mysql, redis) from the locally built images, with passwords, and
the same trivial agent: a container on the services' network that prints one line.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PASSWORD = "benchpassword42"
AGENT_IMAGE = "debian:bookworm-slim"
AGENT_LINE = "agent-ran"


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    port: int
    env: dict[str, str]
    command: tuple[str, ...] | None
    exec_probe: tuple[str, ...]  # an authenticated check run inside the container
    data_paths: tuple[str, ...] = ()  # where it keeps its data (moat puts them in memory: tmpfs)


SERVICES = (
    Service("postgres", "moat-test/postgres:latest", 5432, {"POSTGRES_PASSWORD": PASSWORD}, None,
            ("sh", "-c", f"PGPASSWORD={PASSWORD} psql -h 127.0.0.1 -U postgres -tAc 'select 1'"),
            ("/var/lib/postgresql/data",)),
    Service("mysql", "moat-test/mysql:latest", 3306, {"MYSQL_ROOT_PASSWORD": PASSWORD, "MYSQL_DATABASE": "moat"},
            None, ("sh", "-c", f"MYSQL_PWD={PASSWORD} mysql --protocol=TCP -h 127.0.0.1 -uroot -e 'select 1'"),
            ("/var/lib/mysql",)),
    Service("redis", "moat-test/redis:latest", 6379, {}, ("redis-server", "--requirepass", PASSWORD),
            ("sh", "-c", f"REDISCLI_AUTH={PASSWORD} redis-cli -h 127.0.0.1 ping | grep -q PONG"), ("/data",)),
)


def _postgres_handshake(sock: socket.socket) -> bool:
    sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest: the server answers 'S' or 'N'
    return sock.recv(1) in (b"S", b"N")


def _mysql_handshake(sock: socket.socket) -> bool:
    return len(sock.recv(4)) == 4  # the server speaks first: its greeting packet


def _redis_handshake(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(1) in (b"+", b"-")  # PONG, or NOAUTH: either way, redis answered


HANDSHAKES: dict[str, Callable[[socket.socket], bool]] = {
    "postgres": _postgres_handshake, "mysql": _mysql_handshake, "redis": _redis_handshake,
}


def answers(service: str, address: str, port: int, timeout: float = 0.2) -> bool:
    """One protocol-level check: TCP connect plus the service's own first exchange (no exec)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return HANDSHAKES[service](sock)
    except OSError:
        return False


def wait_answering(service: str, address: str, port: int, interval: float, deadline: float) -> float:
    """Poll until the service answers; returns the wall-clock time (time.time()) it first did."""
    while time.monotonic() < deadline:
        if answers(service, address, port):
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"{service} did not answer at {address}:{port}")


def create_agent(client: Any, network: str | None = None, **create: Any) -> Any:
    return client.containers.create(AGENT_IMAGE, ["echo", AGENT_LINE], network=network, **create)


# As moat holds its agent (plan.containers.HOLD_WRAPPER): started early, waiting for a line on stdin.
HELD_COMMAND = ["sh", "-c", f"read -r _ || exit 125; echo {AGENT_LINE}"]


def hold_agent(client: Any, network: str, **create: Any) -> tuple[Any, Any]:
    """The agent created and started, blocked on its stdin; and its output stream, attached before
    it could print."""
    agent = client.containers.create(AGENT_IMAGE, HELD_COMMAND, network=network, stdin_open=True, **create)
    stream = agent.attach(stdout=True, stderr=True, stream=True, logs=True)
    agent.start()
    return agent, stream


def release_agent(agent: Any, stream: Any, started: float) -> float:
    """Its turn (a line on its stdin, as moat writes one); seconds from ``started`` to its output."""
    sock = agent.attach_socket(params={"stdin": 1, "stream": 1})
    try:
        raw = getattr(sock, "_sock", sock)
        raw.sendall(b"go\n")
        first = None
        for _ in stream:
            first = first or time.monotonic() - started
        agent.wait()
    finally:
        sock.close()
        agent.remove(force=True)
    if first is None:
        raise RuntimeError("the held agent printed nothing")
    return first


def run_agent(client: Any, started: float, network: str | None = None, agent: Any = None, **create: Any) -> float:
    """Start the trivial agent (docker SDK ``client``; ``agent``: one created beforehand); seconds
    from ``started`` to its first output."""
    agent = agent or create_agent(client, network, **create)
    try:
        stream = agent.attach(stdout=True, stderr=True, stream=True, logs=True)
        agent.start()
        first = None
        for _ in stream:
            first = first or time.monotonic() - started
        agent.wait()
    finally:
        agent.remove(force=True)
    if first is None:
        raise RuntimeError("the agent printed nothing")
    return first
