"""What moat's credential proxy costs: start-up, added latency, throughput and memory.

    python benchmarks/proxy.py [--requests N] [--json FILE]

An HTTPS upstream in a process of its own on 127.0.0.1 (a CA made here; the daemon trusts it through
SSL_CERT_FILE) is asked directly and through the real daemon (as moat-host:<port>, with a grant
injected on every request), alternating request by request in the same client process:

- start-up: a cold ``ensure_running`` (the daemon spawned and ready) and a warm one (found again);
- latency: median (and p90) of N keep-alive requests on one connection each way, and of N requests
  on a new connection each (TCP + TLS every time), and what the proxy adds;
- throughput: a 100 MB download, direct and through the proxy, three times each;
- memory: the daemon's resident size idle, with 4 runs registered, and after all of the above;
- the floor: bare ``mitmdump`` (no moat addons, bodies streamed) in the same alternation, for what
  mitmproxy itself costs.

Goals: at most 2 ms added to a keep-alive request's median; at least 80 % of direct throughput.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moat.credentials.rules import GrantRules, HeaderInjection, Registration  # noqa: E402
from moat.proxy import client  # noqa: E402
from tests.integration.proxy_support import TestCA, make_ca  # noqa: E402

GOALS = {"keepalive_added_ms_median": 2.0, "throughput_ratio": 0.80}
DOWNLOAD = 100 * 1024 * 1024

UPSTREAM = r"""
import ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait between them
    def log_message(self, *args): pass
    def do_GET(self):
        size = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/bytes/") else 2
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * 262144
        while size:
            n = min(size, len(block))
            self.wfile.write(block[:n])
            size -= n

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Clients:
    def __init__(self, ca: TestCA, info: client.ProxyInfo, port: int, token: str) -> None:
        self.direct_context = ssl.create_default_context(cafile=str(ca.cert_file))
        self.proxy_context = ssl.create_default_context(cafile=str(info.ca_cert))
        self.info, self.port = info, port
        self.auth = {"Proxy-Authorization": "Basic " + base64.b64encode(f"moat:{token}".encode()).decode()}

    def direct(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.direct_context, timeout=30)

    def proxied(self) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection("127.0.0.1", self.info.port, context=self.proxy_context, timeout=30)
        connection.set_tunnel("moat-host", self.port, headers=self.auth)
        return connection


def get(connection: http.client.HTTPSConnection, path: str = "/small") -> int:
    connection.request("GET", path)
    response = connection.getresponse()
    size = 0
    while chunk := response.read(1024 * 1024):
        size += len(chunk)
    if response.status != 200:
        raise RuntimeError(f"{path}: status {response.status}")
    return size


def alternate(n: int, direct: Callable[[], None], proxied: Callable[[], None]) -> tuple[list[float], list[float]]:
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        order = ((0, direct), (1, proxied)) if i % 2 == 0 else ((1, proxied), (0, direct))
        for index, action in order:
            started = time.perf_counter()
            action()
            times[index].append((time.perf_counter() - started) * 1000)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median": statistics.median(ordered), "p90": ordered[int(len(ordered) * 0.9) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement (default 300)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="moat-proxy-bench-"))
    ca = make_ca(scratch / "ca")
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(ca.leaf_cert), str(ca.leaf_key)],
                                stdout=subprocess.PIPE, text=True)
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}
    env["SSL_CERT_FILE"] = str(ca.cert_file)
    figures: dict[str, Any] = {}
    info: client.ProxyInfo | None = None
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        cold = []
        for _ in range(3):
            started = time.perf_counter()
            info = client.ensure_running(home, idle=0, environ=env)
            cold.append(time.perf_counter() - started)
            client.stop(home)
        started = time.perf_counter()
        info = client.ensure_running(home, idle=0, environ=env)
        cold.append(time.perf_counter() - started)
        warm = []
        for _ in range(20):
            started = time.perf_counter()
            client.ensure_running(home)
            warm.append((time.perf_counter() - started) * 1000)
        figures["startup_cold_s_median"] = statistics.median(cold)
        figures["startup_warm_ms_median"] = statistics.median(warm)
        time.sleep(1)
        figures["rss_idle_mb"] = rss_mb(info.pid)

        tokens = [secrets.token_hex(32) for _ in range(4)]
        for n, token in enumerate(tokens):
            grants = (GrantRules("local", injections=(HeaderInjection(("moat-host",), (("X-Key", f"secret-{n}"),)),)),
                      GrantRules("github", injections=(HeaderInjection(("api.github.com",),
                                                                       (("Authorization", f"Bearer ghp_{n}"),)),)))
            client.register(home, Registration(run_id=f"run_bench{n}", token=token, grants=grants,
                                               trace_file=str(scratch / f"trace{n}.jsonl"), host_ports=(port,)))
        figures["rss_4_runs_mb"] = rss_mb(info.pid)

        clients = Clients(ca, info, port, tokens[0])
        n = args.requests
        direct, proxied = clients.direct(), clients.proxied()
        for _ in range(20):  # warm-up: connections made, leaf certificate minted
            get(direct)
            get(proxied)
        kept = alternate(n, lambda: get(direct) and None, lambda: get(proxied) and None)
        direct.close()
        proxied.close()
        figures["keepalive_direct_ms"] = summary(kept[0])
        figures["keepalive_proxy_ms"] = summary(kept[1])
        figures["keepalive_added_ms_median"] = figures["keepalive_proxy_ms"]["median"] - \
            figures["keepalive_direct_ms"]["median"]

        def fresh(make: Callable[[], http.client.HTTPSConnection]) -> Callable[[], None]:
            def once() -> None:
                connection = make()
                get(connection)
                connection.close()
            return once

        new = alternate(n, fresh(clients.direct), fresh(clients.proxied))
        figures["new_connection_direct_ms"] = summary(new[0])
        figures["new_connection_proxy_ms"] = summary(new[1])
        figures["new_connection_added_ms_median"] = figures["new_connection_proxy_ms"]["median"] - \
            figures["new_connection_direct_ms"]["median"]

        rates: tuple[list[float], list[float]] = ([], [])
        for i in range(6):
            proxied_turn = i % 2 == 1
            connection = clients.proxied() if proxied_turn else clients.direct()
            started = time.perf_counter()
            assert get(connection, f"/bytes/{DOWNLOAD}") == DOWNLOAD
            rates[proxied_turn].append(DOWNLOAD / (1024 * 1024) / (time.perf_counter() - started))
            connection.close()
        figures["throughput_direct_mb_s"] = statistics.median(rates[0])
        figures["throughput_proxy_mb_s"] = statistics.median(rates[1])
        figures["throughput_ratio"] = figures["throughput_proxy_mb_s"] / figures["throughput_direct_mb_s"]
        figures["rss_after_mb"] = rss_mb(info.pid)
        figures.update(floor(ca, port, n, scratch))
    finally:
        if info is not None:
            client.stop(home)
        upstream.terminate()
        upstream.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)

    report(figures, args.requests)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def floor(ca: TestCA, port: int, n: int, scratch: Path) -> dict[str, Any]:
    """The same keep-alive and download measurements through bare mitmdump."""
    mitmdump = client.find_proxy_python().parent / "mitmdump"
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        listen = spare.getsockname()[1]
    confdir = scratch / "mitmdump"
    options = [f"confdir={confdir}", f"ssl_verify_upstream_trusted_ca={ca.cert_file}", "stream_large_bodies=1"]
    process = subprocess.Popen([str(mitmdump), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(listen),
                                *(f"--set={option}" for option in options)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (confdir / "mitmproxy-ca-cert.pem").exists() or not _listening(listen):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("mitmdump did not start")
            time.sleep(0.05)
        direct_context = ssl.create_default_context(cafile=str(ca.cert_file))
        proxy_context = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))

        def direct() -> http.client.HTTPSConnection:
            return http.client.HTTPSConnection("127.0.0.1", port, context=direct_context, timeout=30)

        def proxied() -> http.client.HTTPSConnection:
            connection = http.client.HTTPSConnection("127.0.0.1", listen, context=proxy_context, timeout=30)
            connection.set_tunnel("127.0.0.1", port)
            return connection

        d, p = direct(), proxied()
        for _ in range(20):
            get(d)
            get(p)
        kept = alternate(n, lambda: get(d) and None, lambda: get(p) and None)
        d.close()
        p.close()
        rates = []
        for make in (direct, proxied):
            connection = make()
            started = time.perf_counter()
            get(connection, f"/bytes/{DOWNLOAD}")
            rates.append(DOWNLOAD / (1024 * 1024) / (time.perf_counter() - started))
            connection.close()
        return {"floor_keepalive_added_ms_median": statistics.median(kept[1]) - statistics.median(kept[0]),
                "floor_throughput_mb_s": rates[1], "floor_throughput_ratio": rates[1] / rates[0]}
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def report(f: dict[str, Any], n: int) -> None:
    def pair(key: str) -> str:
        return f"median {f[key]['median']:.2f} ms, p90 {f[key]['p90']:.2f} ms"

    print(f"start-up: cold {f['startup_cold_s_median']:.2f} s (spawned until ready), "
          f"warm {f['startup_warm_ms_median']:.2f} ms (found again)")
    print(f"keep-alive HTTPS, {n} requests each, alternating:")
    print(f"  direct   {pair('keepalive_direct_ms')}")
    print(f"  proxied  {pair('keepalive_proxy_ms')}")
    print(f"  added    {f['keepalive_added_ms_median']:.2f} ms median "
          f"(goal <= {GOALS['keepalive_added_ms_median']:.1f} ms: "
          f"{'met' if f['keepalive_added_ms_median'] <= GOALS['keepalive_added_ms_median'] else 'MISSED'}); "
          f"ratio {f['keepalive_proxy_ms']['median'] / f['keepalive_direct_ms']['median']:.2f}x")
    print(f"new connection per request (TCP + TLS), {n} each:")
    print(f"  direct   {pair('new_connection_direct_ms')}")
    print(f"  proxied  {pair('new_connection_proxy_ms')}")
    print(f"  added    {f['new_connection_added_ms_median']:.2f} ms median; ratio "
          f"{f['new_connection_proxy_ms']['median'] / f['new_connection_direct_ms']['median']:.2f}x")
    print(f"100 MB download: direct {f['throughput_direct_mb_s']:.0f} MB/s, proxied {f['throughput_proxy_mb_s']:.0f} "
          f"MB/s, ratio {f['throughput_ratio']:.2f} (goal >= {GOALS['throughput_ratio']:.2f}: "
          f"{'met' if f['throughput_ratio'] >= GOALS['throughput_ratio'] else 'MISSED'})")
    print(f"memory (RSS): idle {f['rss_idle_mb']:.0f} MB, 4 runs registered {f['rss_4_runs_mb']:.0f} MB, "
          f"after the runs above {f['rss_after_mb']:.0f} MB")
    print(f"floor, bare mitmdump: keep-alive added {f['floor_keepalive_added_ms_median']:.2f} ms median, "
          f"100 MB at {f['floor_throughput_mb_s']:.0f} MB/s (ratio {f['floor_throughput_ratio']:.2f}); moat's "
          f"addons add {f['keepalive_added_ms_median'] - f['floor_keepalive_added_ms_median']:.2f} ms")


if __name__ == "__main__":
    main()
