"""moat's routing proxy (run/router.py) against its floor, and snapshots against tar.

    python benchmarks/router.py [--requests N] [--json FILE]

Routing: one HTTP/1.1 request per new connection (a browser's first request to an endpoint), to a
small upstream on a Unix socket (what the pod's holder forwards to), timed from connect to the last
byte of the answer, in rotating order:
  - floor: straight to the upstream's Unix socket (no proxy at all);
  - http: through the routing proxy, plain HTTP (Host header routing);
  - https: through the routing proxy over TLS (SNI certificate, moat's CA).
A peer: ``socat`` TCP→Unix (a dumb relay with no routing), when installed. The Go tool's own routing
proxy is not available here.

Snapshots: a pre-run snapshot of this repository's tree (.gitignore honoured) against ``tar -cz`` of
the same file list (``git ls-files``), gzip level 1 as moat's: what the pre-run snapshot costs a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from moat.files import write_private  # noqa: E402
from moat.ownership import process_start  # noqa: E402
from moat.run.router import Router  # noqa: E402
from moat.run.routes import Route, RouteTable  # noqa: E402
from moat.run.snapshots import PRE_RUN, Selection, Snapshots  # noqa: E402

BODY = b"x" * 1024


def _upstream(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(64)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)

    threading.Thread(target=serve, daemon=True).start()


def _request(connect: Any, host: str) -> float:
    start = time.perf_counter()
    conn = connect()
    with conn:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while conn.recv(65536):
            pass
    return time.perf_counter() - start


def routing(requests: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="moat-bench-router-"))
    home = work / "home"
    run_id = "run_00000000bench"[:16]
    (home / "runs" / run_id).mkdir(parents=True)
    write_private(home / "runs" / run_id / "metadata.json", json.dumps(
        {"id": run_id, "name": "bench", "state": "running", "pid": os.getpid(),
         "pid_start": process_start(os.getpid()) or ""}))
    upstream = work / "web.sock"
    _upstream(upstream)
    RouteTable(home).add(Route(run_id, "bench", "bench", {"web": (3000, str(upstream))}))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    router = Router(home, port, idle=3600)
    loop = asyncio.new_event_loop()
    threading.Thread(target=lambda: loop.run_until_complete(router.serve(listener)), daemon=True).start()
    tls = ssl.create_default_context(cafile=str(home / "proxy" / "ca" / "moat-ca.crt"))
    host = f"web.bench.localhost:{port}"

    def unix() -> socket.socket:
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(str(upstream))
        return conn

    def tcp(to: int) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", to))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl and browsers do
        return conn

    contenders: dict[str, Any] = {
        "floor": unix,
        "http": lambda: tcp(port),
        "https": lambda: tls.wrap_socket(tcp(port), server_hostname="web.bench.localhost"),
    }
    socat = None
    if shutil.which("socat"):
        socat_port = _free_port()
        socat = subprocess.Popen(["socat", f"TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork",
                                  f"UNIX-CONNECT:{upstream}"], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        contenders["socat (peer)"] = lambda: tcp(socat_port)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for connect in contenders.values():  # warm-up: certificates made, code paths loaded
            for _ in range(5):
                _request(connect, host)
        for index in range(requests):
            names = list(contenders)
            for name in names[index % len(names):] + names[:index % len(names)]:
                times[name].append(_request(contenders[name], host))
    finally:
        if socat is not None:
            socat.terminate()
            socat.wait()
    router.certificates.close()
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    shutil.rmtree(work, ignore_errors=True)
    return {"median_ms": medians, "vs_floor": {n: medians[n] / medians["floor"] for n in medians}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def snapshot(runs: int) -> dict[str, Any]:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    count = files.count(b"\0")
    moat_times, tar_times = [], []
    for index in range(runs * 2):
        with tempfile.TemporaryDirectory(prefix="moat-bench-snap-") as directory:
            start = time.perf_counter()
            if index % 2 == 0:
                Snapshots(Path(directory) / "snapshots").create(ROOT, PRE_RUN, Selection())
                moat_times.append(time.perf_counter() - start)
            else:
                subprocess.run(["tar", "-C", str(ROOT), "--null", "-T", "-", "-cf", "-"], input=files,
                               stdout=open(Path(directory) / "x.tar", "wb"), check=True)  # noqa: SIM115
                subprocess.run(["gzip", "-1", str(Path(directory) / "x.tar")], check=True)
                tar_times.append(time.perf_counter() - start)
    moat_s, tar_s = statistics.median(moat_times), statistics.median(tar_times)
    return {"files": count, "moat_seconds": moat_s, "tar_gzip_seconds": tar_s, "moat_vs_tar": moat_s / tar_s}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--snapshots", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = {"routing": routing(args.requests), "snapshot": snapshot(args.snapshots)}
    route = figures["routing"]
    print(f"routing: one request per connection, medians of {args.requests} (ms); ratio to the floor")
    for name, value in route["median_ms"].items():
        print(f"  {name:<14} {value:7.3f} ms   x{route['vs_floor'][name]:.2f}")
    snap = figures["snapshot"]
    print(f"pre-run snapshot of this repository ({snap['files']} files): moat {snap['moat_seconds']:.3f} s,"
          f" tar|gzip -1 {snap['tar_gzip_seconds']:.3f} s (x{snap['moat_vs_tar']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
