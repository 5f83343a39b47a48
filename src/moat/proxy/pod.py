"""The proxy as a sidecar of one Kubernetes pod: ``python -m moat.proxy.pod --secret-dir DIR``.

The same daemon as on a workstation, serving exactly one run: its registration (token, grants, policy)
and its own CA arrive in the run's Secret, mounted read-only into this container alone; it listens on
the pod's loopback at a fixed port, where the agent's proxy URL points, and never idles out (the pod's
end is its end). Its private files (the CA's key, the trace) live in the container's memory-backed
/tmp; moat reads the trace back before the pod is deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from moat.credentials.rules import Registration
from moat.files import private_dir, write_private
from moat.proxy.ca import KEY_AND_CERT
from moat.proxy.daemon import Daemon, configure_logging
from moat.proxy.paths import ProxyPaths, trace_path
from moat.proxy.registry import validate

REGISTRATION = "registration.json"  # the Secret's keys (plan.kube.manifests writes them)
CA_KEY = "mitmproxy-ca.pem"
HOME_ENV = "MOAT_POD_PROXY_HOME"  # where its private files go (default: a new directory in $TMPDIR)


def prepare(secret_dir: Path, home: Path) -> Registration:
    """The run's registration, its trace under ``home``, and the run's CA where the daemon finds it."""
    data = json.loads((secret_dir / REGISTRATION).read_text())
    registration = Registration.from_json(data)
    trace = trace_path(home, registration.run_id)
    private_dir(trace.parent.parent)
    private_dir(trace.parent)
    registration = Registration.from_json({**data, "trace_file": str(trace)})
    problem = validate(registration, home)
    if problem:
        raise SystemExit(f"moat proxy: the run's registration is refused: {problem}")
    ca_dir = private_dir(ProxyPaths(home).ca_dir)
    write_private(ca_dir / KEY_AND_CERT, (secret_dir / CA_KEY).read_text())
    return registration


async def _serve(paths: ProxyPaths, port: int, registration: Registration) -> int:
    daemon = Daemon(paths, idle=0, port=port)
    daemon.register(registration)
    return await daemon.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moat.proxy.pod", description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret-dir", required=True, type=Path, help="the run's proxy Secret, mounted")
    parser.add_argument("--listen", default="127.0.0.1:19080", help="127.0.0.1:PORT on the pod's loopback")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        parser.error("--listen must be 127.0.0.1:PORT (the proxy is the pod's, on its loopback)")
    configure_logging()
    os.umask(0o077)
    home = Path(os.environ.get(HOME_ENV) or tempfile.mkdtemp(prefix="moat-proxy-"))
    private_dir(home)
    registration = prepare(args.secret_dir, home)
    paths = ProxyPaths(home)
    private_dir(paths.dir)
    return asyncio.run(_serve(paths, int(port), registration))


if __name__ == "__main__":
    sys.exit(main())
