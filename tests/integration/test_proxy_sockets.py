"""The client's control-socket exchanges against a stand-in daemon, and the byte relays between TCP
and Unix sockets (moat.proxy.client, moat.proxy.relay): Unix sockets, so not the unit tier."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from moat.proxy import client, relay
from moat.proxy.errors import ProxyError
from moat.proxy.paths import ProxyPaths


def test_without_a_daemon_nothing_is_running_and_nothing_fails(tmp_path: Path) -> None:
    assert client.status(tmp_path) is None
    assert client.unregister(tmp_path, "run_a") is False
    assert client.stop(tmp_path) is None


def test_stop_clears_a_dead_daemons_file(tmp_path: Path) -> None:
    paths = ProxyPaths(tmp_path)
    paths.dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths.state.write_text(json.dumps({"pid": dead.pid, "pid_start": "1", "port": 1}))
    assert client.stop(tmp_path) is None
    assert not paths.state.exists()


@contextmanager
def control_socket(home: Path, reply: bytes | None) -> Iterator[list[bytes]]:
    """A stand-in daemon answering every request with ``reply`` (None: hang up)."""
    paths = ProxyPaths(home)
    paths.dir.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(paths.control))
    server.listen()
    server.settimeout(0.05)
    received: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(5)
            with connection:
                received.append(connection.recv(65536))
                if reply is not None:
                    connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        done.set()
        thread.join(5)
        server.close()
        os.unlink(paths.control)


def test_status_reads_what_the_daemon_says(tmp_path: Path) -> None:
    reply = {"ok": True, "protocol": 1, "pid": 4242, "pid_start": "99", "port": 41000, "started_at": "t",
             "listeners": {"127.0.0.1": 41000, "172.17.0.1": 41001}, "runs": ["run_a"], "idle_seconds": 0,
             "idle_limit": 60, "upstream": ["http://proxy.corp:3128"]}
    with control_socket(tmp_path, json.dumps(reply).encode() + b"\n") as received:
        info = client.status(tmp_path)
    assert json.loads(received[0]) == {"op": "status"}
    assert info is not None
    assert (info.pid, info.port, info.runs, info.upstream) == (4242, 41000, ("run_a",), ("http://proxy.corp:3128",))
    assert info.listeners == {"127.0.0.1": 41000, "172.17.0.1": 41001}
    assert info.ca_cert == tmp_path / "proxy" / "ca" / "moat-ca.crt"
    assert info.proxy_socket == tmp_path / "proxy" / "relay" / "proxy.sock"
    assert info.url("tok") == "http://moat:tok@127.0.0.1:41000"
    assert info.url("tok", host="moat-proxy", port=41001) == "http://moat:tok@moat-proxy:41001"


def test_a_daemon_that_hangs_up_or_talks_nonsense(tmp_path: Path) -> None:
    with control_socket(tmp_path, None):
        assert client.status(tmp_path) is None  # on its way out
        assert client.unregister(tmp_path, "run_a") is False
    with control_socket(tmp_path, b"nonsense\n"), pytest.raises(ProxyError, match="not a reply"):
        client.status(tmp_path)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()  # until the client's half-close
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


def test_tcp_to_unix_relays_both_ways_with_half_close(tmp_path: Path) -> None:
    async def scenario() -> bytes:
        target = str(tmp_path / "target.sock")
        backend = await asyncio.start_unix_server(_echo, target)
        front = await relay.serve_tcp("127.0.0.1", 0, relay.to_unix(target))
        port = front.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 300_000)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        front.close()
        backend.close()
        return answer

    assert asyncio.run(scenario()) == b"echo:" + b"x" * 300_000


def test_unix_to_tcp_relays_and_a_missing_target_closes(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        backend = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        front_path = str(tmp_path / "front.sock")
        front = await relay.serve_unix(front_path, relay.to_tcp("127.0.0.1", port))
        reader, writer = await asyncio.open_unix_connection(front_path)
        writer.write(b"hello")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        nowhere = await relay.serve_unix(str(tmp_path / "nowhere.sock"), relay.to_unix(str(tmp_path / "absent")))
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "nowhere.sock"))
        closed = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        for server in (front, backend, nowhere):
            server.close()
        return answer, closed

    assert asyncio.run(scenario()) == (b"echo:hello", b"")


def test_a_daemon_of_another_build_is_never_reused(tmp_path: Path) -> None:
    """A daemon started by another build of moat would not enforce what this one registers (a new
    policy would fail open): while it serves runs, moat refuses to use it."""
    from moat.proxy.paths import ProxyPaths, daemon_build

    reply = {"ok": True, "protocol": 1, "build": "0" * 16, "pid": os.getpid(), "pid_start": "99", "port": 41000,
             "started_at": "t", "listeners": {}, "runs": ["run_a"], "idle_seconds": 0, "idle_limit": 60}
    assert daemon_build() != reply["build"]
    with control_socket(tmp_path, json.dumps(reply).encode() + b"\n"), \
            pytest.raises(ProxyError, match="another version of moat"):
        client._reuse(ProxyPaths(tmp_path), tmp_path / "ca.crt")
