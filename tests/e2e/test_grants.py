"""Grants end to end, as a user runs them: `moat grant`, then `moat run` with an agent that calls the
"internet" with curl and git through moat's proxy.

The internet is local: ``tests.upstream`` stands in for api.github.com and github.com on 127.0.0.1,
reached through a stand-in corporate proxy that moat's proxy is told about in its own environment
(HTTPS_PROXY), as users behind such a proxy tell it. Nothing leaves this machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moat.runtime.docker import DockerRuntime
from moat.runtime.sandbox import SandboxRuntime
from tests.e2e.test_sandbox import sandbox_processes
from tests.helpers import (
    EXAMPLES,
    WORKSPACE_UID,
    left_for,
    metadata,
    run_moat,
    runs,
    share,
    start_moat,
    wait_for,
    write_workspace,
)
from tests.upstream import Seen, StandIn, Upstream, make_ca, stand_in_proxy, upstream_server

TOKEN = "ghp_e2eRealToken0123456789abcdefABCDEF0123"
CONFIG = "name: granted\ndependencies: [curl, git]\ngrants: [github]\n"
# What the agent prints: its environment, every process's environment, its writable files — none may
# hold the token — then what it got through the proxy.
DUMP = ("env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n';"
        " find /tmp /home /workspace /run /etc/ssl/certs/moat-ca -type f 2>/dev/null | xargs cat 2>/dev/null;")


@dataclass
class Internet:
    https: Upstream  # api.github.com, github.com, api.example.test … on 127.0.0.1
    plain: Upstream  # the same names over plain HTTP
    stand_in: StandIn  # the corporate proxy moat's proxy goes through
    env: dict[str, str]  # what moat's environment needs for that

    def seen(self, path_part: str) -> list[Seen]:
        return [r for r in self.https.seen if path_part in r.path]

    @property
    def hosts(self) -> list[str]:
        return [target for target, _ in self.stand_in.connects]


@pytest.fixture
def internet(tmp_path: Path) -> Iterator[Internet]:
    ca = make_ca(tmp_path / "upstream-ca")
    git_root = tmp_path / "git"
    _bare_repository(git_root / "repo.git")
    with (upstream_server(ca, git_root) as https, upstream_server(None) as plain,
          stand_in_proxy(https.port, plain_port=plain.port) as stand_in):
        # moat's proxy trusts the stand-in's certificates (SSL_CERT_FILE), and goes through the stand-in.
        url = f"http://127.0.0.1:{stand_in.port}"
        env = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "SSL_CERT_FILE": str(ca.cert_file), "SSL_CERT_DIR": "",
               "NO_PROXY": ""}
        yield Internet(https, plain, stand_in, env)


@pytest.fixture
def granted(moat_home: Path) -> Iterator[Path]:
    """A MOAT_HOME with a github credential stored the way CI stores one; its proxy stopped after."""
    result = run_moat(["grant", "github", "--token-env", "E2E_TOKEN", "--no-validate"], env={"E2E_TOKEN": TOKEN})
    assert result.code == 0, result.output
    yield moat_home
    stopped = run_moat(["proxy", "stop"])
    assert stopped.code == 0, stopped.output


def _bare_repository(path: Path) -> None:
    work = path.parent / "seed"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "README").write_text("served by the local upstream\n")
    git = ["git", "-C", str(work), "-c", "user.email=t@example.test", "-c", "user.name=t"]
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], check=True)
    subprocess.run([*git, "push", "-q", str(path), "main"], check=True)


def _no_token_anywhere(home: Path, output: str) -> None:
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    for secret in (TOKEN, basic):
        assert secret not in output
        for path in home.rglob("*"):
            if path.is_file() and not path.name.endswith(".enc") and path.suffix != ".sock":
                assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("runtime", ["docker", "sandbox"])
def test_the_agent_uses_the_token_and_never_holds_it(request: pytest.FixtureRequest, granted: Path, tmp_path: Path,
                                                     internet: Internet,
                                                     runtime: str) -> None:
    request.getfixturevalue("engine" if runtime == "docker" else "sandbox")
    env = internet.env
    workspace = write_workspace(tmp_path / "ws", CONFIG)
    script = DUMP + (
        " echo; echo API=$(curl -sS https://api.github.com/user);"
        " git clone -q https://github.com/git/repo.git /tmp/clone && echo CLONED=$(cat /tmp/clone/README);"
        " echo PLAIN=$(curl -sS http://api.github.com/plain);"
        " wrong=$(echo $HTTPS_PROXY | sed 's/:[0-9a-f]*@/:wrong@/');"
        " echo WRONG=$(curl -s -o /dev/null -w '%{http_connect}' -x \"$wrong\" https://api.github.com/user)")
    result = run_moat(["run", "--runtime", runtime, str(workspace), "--", "sh", "-c", script], env=env)
    assert result.code == 0, result.output
    out = result.stdout
    assert "GH_TOKEN=ghp_moatProxyInjectedPlaceholder000000000000" in out
    assert 'API={"method": "GET", "path": "/user"' in out
    assert "CLONED=served by the local upstream" in out
    assert "WRONG=407" in out
    # The real values arrived at the upstream, for their hosts only.
    [api] = internet.seen("/user")
    assert api.header("Authorization") == f"Bearer {TOKEN}"
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    git = internet.seen("/git/repo.git/info/refs")
    assert git and all(r.header("Authorization") == f"Basic {basic}" for r in git)
    assert api.header("Proxy-Authorization") is None
    [plain] = [r for r in internet.plain.seen if r.path.endswith("/plain")]  # plain HTTP: the same injection
    assert plain.header("Authorization") == f"Bearer {TOKEN}"
    assert "api.github.com:443" in internet.hosts and "github.com:443" in internet.hosts
    _no_token_anywhere(granted, result.output)
    # The trace lists every call, with its grant, and no secret.
    [run] = runs(granted)
    trace = run_moat(["trace", "--network", "--json", run["id"]])
    records = json.loads(trace.stdout)
    assert {(r["method"], r["grant"]) for r in records if "/user" in r["url"]} == {("GET", "github")}
    assert any("/git/repo.git/info/refs" in r["url"] for r in records)
    shown = run_moat(["trace", "--network", "-v", run["id"]]).stdout
    assert "Authorization: [REDACTED]" in shown and TOKEN not in shown
    assert run["grants"] == ["github"] and run["proxy"] is True


def test_a_missing_grant_stops_the_run_before_anything_starts(engine: DockerRuntime, moat_home: Path,
                                                              tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", CONFIG)
    result = run_moat(["run", str(workspace), "--", "true"])
    assert result.code == 2, result.output
    assert "no credential stored for github" in result.stderr and "moat grant github" in result.stderr
    assert "Traceback" not in result.stderr
    assert runs(moat_home) == []  # nothing was recorded, nothing started


def test_a_wrong_provider_name_gets_a_suggestion(moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "grants: [githbu]\n")
    result = run_moat(["run", "--dry-run", str(workspace)])
    assert result.code == 2 and "did you mean 'github'" in result.stderr, result.output
    assert "moat.yaml:1:" in result.stderr and "grants[0]" in result.stderr  # where, as for any typo


def test_a_killed_run_leaves_nothing_in_the_proxy_after_clean(engine: DockerRuntime, granted: Path, tmp_path: Path,
                                                              internet: Internet) -> None:
    env = internet.env
    workspace = write_workspace(tmp_path / "ws", CONFIG)
    proc = start_moat(["run", str(workspace), "--", "sleep", "300"], env=env)
    run_id = wait_for(lambda: [r["id"] for r in runs(granted) if r.get("state") == "running"], 120, "the run")[0]
    status = json.loads(run_moat(["proxy", "status", "--json"]).stdout)
    assert run_id in status["runs"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    cleaned = run_moat(["clean", "-f"])
    assert cleaned.code == 0, cleaned.output
    status = json.loads(run_moat(["proxy", "status", "--json"]).stdout)
    assert run_id not in status["runs"]
    assert left_for(engine, run_id) == [] and metadata(granted, run_id)["state"] == "failed"


def test_the_sandbox_relay_is_gone_with_its_run(sandbox: SandboxRuntime, granted: Path, tmp_path: Path,
                                                internet: Internet) -> None:
    env = internet.env
    workspace = write_workspace(tmp_path / "ws", CONFIG)
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "curl", "-sS",
                       "https://api.github.com/user"], env=env)
    assert result.code == 0, result.output
    assert '"path": "/user"' in result.stdout
    assert sandbox_processes(granted) == []  # the relay went with the run (and everything else)
    assert os.stat(workspace).st_uid == WORKSPACE_UID


def test_the_grants_example_with_its_own_provider(engine: DockerRuntime, moat_home: Path, tmp_path: Path,
                                                  internet: Internet) -> None:
    env = internet.env
    workspace = tmp_path / "grants"
    shutil.copytree(EXAMPLES / "grants", workspace)
    share(workspace)
    (moat_home / "providers").mkdir(parents=True)
    shutil.copy(workspace / "providers" / "example-api.yaml", moat_home / "providers")
    key = "ex_live_0123456789abcdefghijklmnop"
    stored = run_moat(["grant", "example", "--no-validate"], env={"EXAMPLE_API_KEY": key})  # by its alias
    assert stored.code == 0, stored.output
    try:
        result = run_moat(["run", str(workspace)], env=env)
    finally:
        run_moat(["proxy", "stop"])
    assert result.code == 0, result.output
    assert "EXAMPLE_API_KEY in the container: moat-proxy-injected" in result.stdout
    assert '"path": "/v1/me"' in result.stdout and key not in result.output
    [seen] = internet.seen("/v1/me")
    assert seen.header("Authorization") == f"Bearer {key}"
