"""ports for real: an agent's HTTP server reached through moat's routing proxy with curl trusting
moat's CA, over https and http, for a permissive and a strict pod (which keeps no route out); `moat
open --print` names the URL; the route goes with the run, the routing proxy ends once idle, and a
second run under the same name is refused while the first publishes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import run_moat, share, start_moat, wait_for, write_workspace

# The agent's server (perl is in every agent image): answers each request with what it saw, and ends
# on /stop, which ends the run.
SERVER = r"""
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 3000, Listen => 5, ReuseAddr => 1)
  or die "listen: $!";
$| = 1; print "serving\n";
while (my $c = $s->accept) {
  my $req = ''; while (my $l = <$c>) { $req .= $l; last if $l eq "\r\n"; }
  my ($path) = $req =~ m{^GET (\S+)};
  my $body = "agent saw $path; MOAT_URL_WEB=$ENV{MOAT_URL_WEB}\n";
  print $c "HTTP/1.1 200 OK\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
  close $c; last if $path eq '/stop';
}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _curl(url: str, ca: Path, port: int) -> subprocess.CompletedProcess[str]:
    host = url.split("://", 1)[1].split("/", 1)[0].split(":", maxsplit=1)[0]
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--noproxy", "*", "--cacert", str(ca),
                           "--resolve", f"{host}:{port}:127.0.0.1", url], capture_output=True, text=True, check=False)


@pytest.mark.engine
@pytest.mark.parametrize("policy", ["permissive", "strict"])
def test_an_agents_server_is_reached_through_the_routing_proxy(engine: object, moat_home: Path, tmp_path: Path,
                                                               policy: str) -> None:
    _check(moat_home, tmp_path, "docker", policy)


@pytest.mark.sandbox
def test_the_sandboxs_agent_is_reached_too(sandbox: object, moat_home: Path, tmp_path: Path) -> None:
    moat_home.mkdir(parents=True, exist_ok=True)
    share(moat_home)  # the forwarder makes its sockets as the agent's user
    _check(moat_home, tmp_path, "sandbox", "strict")


def _check(moat_home: Path, tmp_path: Path, runtime: str, policy: str) -> None:
    port = _free_port()
    env = {"MOAT_PROXY_PORT": str(port), "MOAT_ROUTER_IDLE": "1"}
    name = f"ports-{runtime}-{policy}"
    workspace = write_workspace(tmp_path / "ws", f"name: {name}\nnetwork: {{policy: {policy}}}\nports:\n  web: 3000\n",
                                {"serve.pl": SERVER})
    process = start_moat(["run", "--runtime", runtime, str(workspace), "--", "perl", "serve.pl"], env=env)
    ca = moat_home / "proxy" / "ca" / "moat-ca.crt"
    url = f"https://web.{name}.localhost:{port}"
    try:
        wait_for(lambda: _curl(f"{url}/ready", ca, port).stdout.startswith("agent saw"), timeout=120)
        answer = _curl(f"{url}/hello", ca, port)
        assert answer.stdout == f"agent saw /hello; MOAT_URL_WEB={url}\n", answer.stderr
        plain = _curl(f"http://web.{name}.localhost:{port}/plain", ca, port)
        assert plain.stdout.startswith("agent saw /plain")
        index = subprocess.run(["curl", "-sS", "--noproxy", "*", "--cacert", str(ca), "-H", "Accept: application/json",
                                f"https://localhost:{port}/"], capture_output=True, text=True, check=False)
        [agent] = json.loads(index.stdout)["agents"]
        assert agent["name"] == name and agent["endpoints"][0]["url"] == url
        opened = run_moat(["open", name, "web", "--print"], env=env)
        assert opened.code == 0 and opened.stdout.strip() == f"{url}/"
        clash = run_moat(["run", "--runtime", runtime, str(workspace), "--", "true"], env=env)
        assert clash.code == 2 and f"already answers at {name}.localhost" in clash.stderr
        assert _curl(f"{url}/stop", ca, port).stdout.startswith("agent saw /stop")
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, out + err
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=60)
    assert list((moat_home / "routes").glob("run_*.json")) == []  # the route went with the run
    # The routing proxy reads its table at most every 0.5 s: the route is gone from it just after.
    def gone() -> bool:
        answer = _curl(f"http://web.{name}.localhost:{port}/", ca, port)
        return answer.returncode != 0 or "no run answers" in answer.stdout

    wait_for(gone, timeout=10)
    # The routing proxy ends once no run publishes (MOAT_ROUTER_IDLE=1 here; a minute by default).
    wait_for(lambda: not (moat_home / "routes" / "daemon.json").exists(), timeout=30)
    time.sleep(0.2)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
