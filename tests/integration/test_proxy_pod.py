"""The proxy as a Kubernetes pod's sidecar (``python -m moat.proxy.pod``), run here from the proxy's
virtualenv as the pod runs it from its image: one run's registration and its own CA from a Secret's
directory, a fixed port on loopback, the real token put into requests, the trace in its own home
(where moat reads it back from the pod). Upstreams are local stand-ins, reached through an
upstream-proxy stand-in, as in the daemon's own tests."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.credentials.rules import Registration
from moat.proxy.ca import run_ca
from moat.proxy.paths import trace_path
from tests.integration.proxy_support import (
    daemon_env,
    make_ca,
    require_curl,
    require_proxy_python,
    stand_in_proxy,
    upstream_server,
    wait_for_trace,
)
from tests.integration.test_proxy_grants import github, secrets_absent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pod_proxy(tmp_path: Path) -> Iterator[tuple[int, str, str, Path, Path, object]]:
    """(port, token, real grant value, trace, the run CA's certificate, the upstream)."""
    require_curl()
    python = require_proxy_python()
    ca = make_ca(tmp_path / "upstream-ca")
    real, token = "ghp_" + secrets.token_hex(18), secrets.token_hex(32)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    key_and_cert, cert = run_ca()
    registration = Registration(run_id="run_0123456789ab", token=token, grants=(github(real),))
    (secret_dir / "registration.json").write_text(json.dumps(registration.to_json()))
    (secret_dir / "mitmproxy-ca.pem").write_text(key_and_cert)
    (tmp_path / "run-ca.crt").write_text(cert)
    home = tmp_path / "proxy-home"
    port = _free_port()
    with upstream_server(ca) as upstream, stand_in_proxy(upstream.port, {}) as stand_in:
        env = daemon_env(HTTPS_PROXY=f"http://127.0.0.1:{stand_in.port}", SSL_CERT_FILE=str(ca.cert_file),
                         MOAT_POD_PROXY_HOME=str(home))
        env.pop("SSL_CERT_DIR", None)
        process = subprocess.Popen([str(python), "-m", "moat.proxy.pod", "--secret-dir", str(secret_dir),
                                    "--listen", f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the pod's proxy never listened"
                time.sleep(0.05)
            yield port, token, real, trace_path(home, "run_0123456789ab"), tmp_path / "run-ca.crt", upstream
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _curl(port: int, token: str, ca: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                                     "NO_PROXY", "CURL_CA_BUNDLE", "SSL_CERT_FILE")}
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--proxy", f"http://moat:{token}@127.0.0.1:{port}",
                           "--cacert", str(ca), *args, url], capture_output=True, text=True, env=env, timeout=30,
                          check=False)


def test_the_pods_proxy_puts_the_runs_grant_into_requests_signed_by_the_runs_own_ca(
        pod_proxy: tuple[int, str, str, Path, Path, object]) -> None:
    port, token, real, trace, run_ca_cert, upstream = pod_proxy
    result = _curl(port, token, run_ca_cert, "https://api.github.com/echo/pod",
                   "-H", "Authorization: Bearer ghp_moatProxyInjectedPlaceholder000000000000")
    assert result.returncode == 0, result.stderr  # the agent trusts the run's CA, and only it
    seen = [s for s in upstream.seen if s.path == "/echo/pod"][-1]  # type: ignore[attr-defined]
    assert seen.header("Authorization") == f"Bearer {real}"
    [line] = wait_for_trace(trace, 1)
    assert line["grant"] == "github" and line["status_code"] == 200
    secrets_absent(trace.read_text(), real, token)
    refused = _curl(port, "0" * 64, run_ca_cert, "https://api.github.com/echo/other")
    assert "407" in refused.stdout + refused.stderr  # a token that is not the run's gets nothing
