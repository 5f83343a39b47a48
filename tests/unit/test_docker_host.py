"""docker:host: Docker's CLI from Docker's signed apt repository, the engine's socket handed to the
agent with its group — and refused where a policy or a runtime could not hold with it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from moat.cli.runinputs import docker_socket
from moat.errors import ConfigError, UsageError
from moat.plan.identity import Identity
from moat.policy.keep import inline_rules
from tests.unit.support import config_error, plan_for

SOCKET = ("/run/user-engine/docker.sock", 998)


def test_the_agent_gets_the_socket_its_group_and_docker_host() -> None:
    plan = plan_for("dependencies: ['docker:host']\n", docker_socket=SOCKET, identity=Identity(1000, 1000))
    [mount] = [m for m in plan.agent.mounts if m.target == "/var/run/docker.sock"]
    assert mount.source == SOCKET[0] and not mount.read_only
    assert plan.agent.groups == (998,)
    assert plan.agent.env["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert plan.agent.cap_drop == ("ALL",) and plan.agent.no_new_privileges  # the socket, and nothing more


def test_the_cli_comes_from_dockers_signed_repository_or_its_mirror() -> None:
    plan = plan_for("dependencies: ['docker:host']\n", docker_socket=SOCKET)
    [line] = [line for line in plan.image.dockerfile.splitlines() if "docker-ce-cli" in line]
    assert '"https://download.docker.com/linux/$(. /etc/os-release && echo "$ID")/gpg"' in line
    assert "signed-by=/etc/apt/keyrings/docker.asc" in line
    mirrored = plan_for("dependencies: ['docker:host']\n", docker_socket=SOCKET,
                        host_env={"MOAT_DOCKER_APT_BASE": "https://mirror.example.com/docker/linux/"})
    assert "https://mirror.example.com/docker/linux/$(" in mirrored.image.dockerfile
    assert "download.docker.com" not in mirrored.image.dockerfile
    with pytest.raises(UsageError, match="MOAT_DOCKER_APT_BASE must be an https:// URL"):
        plan_for("dependencies: ['docker:host']\n", docker_socket=SOCKET,
                 host_env={"MOAT_DOCKER_APT_BASE": "http://mirror.example.com/x"})


def test_a_mirror_setting_changes_nothing_for_an_image_without_docker() -> None:
    plain = plan_for("dependencies: [git]\n").image.tag
    assert plan_for("dependencies: [git]\n", host_env={"MOAT_DOCKER_APT_BASE": "not a url"}).image.tag == plain


@pytest.mark.parametrize("text, request_args, message", [
    ("dependencies: ['docker:host']\nnetwork: {policy: strict}\n", {"docker_socket": SOCKET,
                                                                    "proxy_ca": Path("/m/ca.crt")},
     "cannot run with network.policy: strict, network.rules or claude.llm-gateway"),
    ("dependencies: ['docker:host']\nnetwork: {rules: [{api.github.com: [deny * /**]}]}\n",
     {"docker_socket": SOCKET, "proxy_ca": Path("/m/ca.crt")}, "outside any policy"),
    ("dependencies: ['docker:host']\nclaude: {llm-gateway: {policy: {deny: [llm.tool_use]}}}\n",
     {"docker_socket": SOCKET, "proxy_ca": Path("/m/ca.crt"),
      "llm_policy": inline_rules(["llm.tool_use"], "", "llm-gateway")}, "outside any policy"),
    ("dependencies: ['docker:host']\n", {"docker_socket": SOCKET, "runtime": "sandbox"}, "needs the docker runtime"),
    ("dependencies: ['docker:host']\n", {}, "needs the Docker engine's Unix socket"),
])
def test_where_it_cannot_hold_it_is_refused_at_its_line(text: str, request_args: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_for(text, **request_args)
    [problem] = caught.value.problems
    assert message in problem.message and problem.line == 1


@pytest.mark.parametrize("text, message", [
    ("dependencies: [docker]\n", "docker needs a mode: 'docker:host'"),
    ("dependencies: ['docker:dind']\n", "is not provided yet"),
    ("dependencies: ['docker:hots']\n", "docker needs a mode"),
])
def test_the_modes_are_said(text: str, message: str) -> None:
    [problem] = config_error(text).problems
    assert message in problem.message


def test_the_socket_is_the_engines_own(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        assert docker_socket({"DOCKER_HOST": f"unix://{path}"}) == (str(path), path.stat().st_gid)
    finally:
        server.close()
    assert docker_socket({"DOCKER_HOST": f"unix://{tmp_path / 'none'}"}) is None
    (tmp_path / "file").write_text("")
    assert docker_socket({"DOCKER_HOST": f"unix://{tmp_path / 'file'}"}) is None  # not a socket
    with pytest.raises(UsageError, match="names 'tcp://"):
        docker_socket({"DOCKER_HOST": "tcp://10.0.0.1:2375"})
    with pytest.raises(UsageError, match="absolute path"):
        docker_socket({"DOCKER_HOST": "unix://rel.sock"})
