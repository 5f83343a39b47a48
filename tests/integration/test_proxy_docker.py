"""How a Docker container reaches moat's proxy, measured on the real engine:

- gateway: the daemon also listens on the bridge's gateway address; the container, on the default
  bridge or a network of its own, reaches it as ``moat-proxy`` (``--add-host moat-proxy:host-gateway``);
- relay: a container with no network at all (``--network none``) runs moat's relay on its own
  loopback, relaying to the daemon's Unix socket mounted into it.

Either way the grant is injected and moat-host reaches the host's listed port; the container holds
no credential. The client inside is Python's urllib with moat's CA, as an agent's tools would be.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import moat.proxy.relay
from moat.credentials.rules import GrantRules, HeaderInjection
from moat.proxy import client
from tests.integration.proxy_support import (
    Upstream,
    daemon_env,
    make_ca,
    registration,
    running_daemon,
    upstream_server,
)

pytestmark = pytest.mark.engine

IMAGE = "moat-test/ollama-standin:latest"  # one of the suite's images with python3 in it
CA_PATH = "/etc/ssl/certs/moat-ca.crt"

CLIENT = r"""
import json, os, ssl, subprocess, sys, urllib.request
if os.environ.get("RELAY"):
    relay = subprocess.Popen([sys.executable, "/moat-relay.py", "--listen", "127.0.0.1:19080", "--to",
                              "/run/moat/proxy.sock"], stdout=subprocess.PIPE, text=True)
    assert relay.stdout.readline().strip() == "ready"
context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
proxy = os.environ["HTTPS_PROXY"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy, "http": proxy}),
                                     urllib.request.HTTPSHandler(context=context))
with opener.open(sys.argv[1], timeout=20) as response:
    print(json.dumps({"status": response.status, "body": json.loads(response.read())}))
"""


@dataclass
class Setup:
    home: Path
    info: client.ProxyInfo
    upstream: Upstream
    token: str
    secret: str
    script: Path


@pytest.fixture
def setup(engine: object, tmp_path: Path) -> Iterator[Setup]:
    ca = make_ca(tmp_path / "ca")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with upstream_server(ca) as upstream, running_daemon(tmp_path / "home",
                                                         env=daemon_env(SSL_CERT_FILE=str(ca.cert_file))) as info:
        token, secret = secrets.token_hex(32), secrets.token_hex(16)
        grant = GrantRules("local", injections=(HeaderInjection(("moat-host",), (("X-Key", secret),)),))
        client.register(tmp_path / "home", registration("run_docker", token, None, grant,
                                                        host_ports=(upstream.port,)))
        yield Setup(tmp_path / "home", info, upstream, token, secret, script)


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def run_client(setup: Setup, proxy: str, *docker_args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    name = f"moat-proxy-test-{uuid.uuid4().hex[:8]}"
    env_args = [f"--env={k}={v}" for k, v in {"HTTPS_PROXY": proxy, "SSL_CERT_FILE": CA_PATH, **(env or {})}.items()]
    try:
        result = docker("run", "--rm", "--name", name, *env_args, *docker_args,
                        f"--volume={setup.info.ca_cert}:{CA_PATH}:ro", f"--volume={setup.script}:/client.py:ro",
                        "--entrypoint", "python3", IMAGE, "/client.py",
                        f"https://moat-host:{setup.upstream.port}/echo/from-docker")
    finally:
        docker("rm", "--force", name)  # gone already unless the run timed out
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def bridge_gateway(network: str) -> str:
    inspected = docker("network", "inspect", network, "--format", "{{json .IPAM.Config}}")
    assert inspected.returncode == 0, inspected.stderr
    return str(json.loads(inspected.stdout)[0]["Gateway"])


def check_injected(setup: Setup, answer: dict[str, object]) -> None:
    assert answer["status"] == 200
    body = answer["body"]
    assert isinstance(body, dict)
    headers = {k.lower(): v for k, v in body["headers"]}
    assert setup.upstream.seen[-1].header("X-Key") == setup.secret  # it arrived for real
    assert headers["x-key"] == "*" * len(setup.secret)  # and the echo never brought it back to the agent
    assert "proxy-authorization" not in headers


def test_a_container_on_a_bridge_reaches_the_proxy_at_the_host_gateway(setup: Setup) -> None:
    gateway = bridge_gateway("bridge")  # what host-gateway names
    port = client.listen(setup.home, gateway)
    proxy = f"http://moat:{setup.token}@moat-proxy:{port}"
    check_injected(setup, run_client(setup, proxy, "--add-host=moat-proxy:host-gateway"))
    # A network of the run's own reaches the same address (the host routes between its bridges).
    network = f"moat-proxy-test-{uuid.uuid4().hex[:8]}"
    assert docker("network", "create", network).returncode == 0
    try:
        check_injected(setup, run_client(setup, proxy, f"--network={network}", "--add-host=moat-proxy:host-gateway"))
        # And the daemon can listen on that network's own gateway too.
        own = client.listen(setup.home, bridge_gateway(network))
        check_injected(setup, run_client(setup, f"http://moat:{setup.token}@moat-proxy:{own}", f"--network={network}",
                                         f"--add-host=moat-proxy:{bridge_gateway(network)}"))
    finally:
        docker("network", "rm", network)


def test_a_container_without_a_network_reaches_the_proxy_through_the_relay(setup: Setup) -> None:
    relay_source = Path(moat.proxy.relay.__file__)
    answer = run_client(setup, f"http://moat:{setup.token}@127.0.0.1:19080", "--network=none",
                        f"--volume={setup.info.proxy_socket}:/run/moat/proxy.sock",
                        f"--volume={relay_source}:/moat-relay.py:ro", env={"RELAY": "1"})
    check_injected(setup, answer)
