"""What the proxy's integration tests share: a test CA, HTTPS upstreams on loopback that record what
they receive, an upstream-proxy stand-in, the real daemon (started with the proxy's virtualenv and
always ended), and clients (curl, Python) that go through it.

Every listener here is on 127.0.0.1 and started by the tests; nothing reaches another machine.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from moat.credentials.rules import Registration
from moat.ownership import process_alive, signal_process
from moat.proxy import client
from moat.proxy.errors import ProxyError
from tests.conftest import skip_or_fail
from tests.upstream import (  # noqa: F401 — the proxy tests' stand-ins, from one place
    UPSTREAM_NAMES,
    Seen,
    StandIn,
    TestCA,
    Upstream,
    make_ca,
    read_head,
    stand_in_proxy,
    upstream_server,
)

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
        data = read_head(sock)
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
