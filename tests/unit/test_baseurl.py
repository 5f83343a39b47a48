"""claude.base_url: where the agent is pointed, and the grant injected for that endpoint too."""

from __future__ import annotations

from pathlib import Path

import pytest

from moat.credentials.rules import GrantRules, HeaderInjection
from moat.errors import ConfigError
from moat.plan.baseurl import BaseUrl, BaseUrlError, route, with_base_url
from moat.plan.policy import plan_caveats
from moat.plan.proxy import ResolvedGrant
from tests.unit.support import plan_for

KEY = "sk-ant-api03-unitRealKey0123456789abcdefABCDEF"
ANTHROPIC = ResolvedGrant("anthropic", GrantRules("anthropic", injections=(
    HeaderInjection(("api.anthropic.com",), (("x-api-key", KEY),)),), values=(KEY,)),
    env={"ANTHROPIC_API_KEY": "moat-proxy-injected"})
GITHUB = ResolvedGrant("github", GrantRules("github", injections=(
    HeaderInjection(("api.github.com",), (("Authorization", "Bearer ghp_x"),)),)), env={})


@pytest.mark.parametrize("url, agent_url, port", [
    ("http://localhost:8787", "http://moat-host:8787", 8787),
    ("http://127.0.0.1:8787/anthropic/", "http://moat-host:8787/anthropic/", 8787),
    ("http://0.0.0.0:9000", "http://moat-host:9000", 9000),  # listening on every address: 127.0.0.1 too
    ("http://llm.localhost", "http://moat-host:80", 80),
])
def test_an_endpoint_on_this_machine_is_reached_as_moat_host(url: str, agent_url: str, port: int) -> None:
    # The grant is for that port alone: not for every port the run lists under network.host.
    assert route(url) == BaseUrl(agent_url, f"moat-host:{port}", port)


def test_an_endpoint_elsewhere_is_used_as_it_is() -> None:
    assert route("https://llm-gateway.example.com:8443/v1") == BaseUrl("https://llm-gateway.example.com:8443/v1",
                                                                       "llm-gateway.example.com")


@pytest.mark.parametrize("url, why", [
    ("https://localhost:8787", "must be plain http://"),
    ("http://llm-gateway.example.com:8080/v1", "elsewhere must be https://"),  # the key would travel in clear
    ("http://[::1]:9000", "at 127.0.0.1, not ::1"),
    ("http://127.0.0.2:9000", "at 127.0.0.1, not 127.0.0.2"),
    ("http://127.1:9000", "usual dotted form"),
    ("http://localhost:0", "port is not valid"),
    ("http://user:pw@gateway.example.com", "must not carry a user or password"),
    ("http://gateway.example.com:99999", "port is not valid"),
    ("ftp://gateway.example.com", "http:// or https://"),
])
def test_what_cannot_be_routed_says_why(url: str, why: str) -> None:
    with pytest.raises(BaseUrlError, match=why):
        route(url)


def test_only_the_anthropic_grants_are_injected_for_the_endpoint() -> None:
    out = with_base_url((ANTHROPIC, GITHUB), BaseUrl("http://moat-host:8787", "moat-host:8787", 8787))
    assert out[0].rules.injections[0].hosts == ("api.anthropic.com", "moat-host:8787")
    assert out[0].rules.injections[0].set == (("x-api-key", KEY),)
    assert out[1] is GITHUB


def test_the_plan_points_the_agent_at_moat_host_and_lets_the_proxy_reach_the_port(tmp_path: Path) -> None:
    plan = plan_for("claude:\n  base_url: http://localhost:8787\nnetwork:\n  policy: strict\n  host: [5432]\n",
                    home=tmp_path, scratch_root=tmp_path, grants=(ANTHROPIC,), proxy_ca=tmp_path / "ca.crt")
    assert plan.agent.env["ANTHROPIC_BASE_URL"] == "http://moat-host:8787"
    assert plan.proxy is not None
    registration = plan.proxy.registration
    assert registration.host_ports == (5432, 8787)
    [grant] = registration.grants
    assert grant.injections[0].hosts == ("api.anthropic.com", "moat-host:8787")
    assert grant.injections[0].applies_to("moat-host:8787")
    assert not grant.injections[0].applies_to("moat-host:5432")  # another of the host's services: nothing
    assert KEY not in str(plan.agent.env)
    assert plan_caveats(plan) == []


def test_a_remote_endpoint_is_admitted_by_a_strict_policy(tmp_path: Path) -> None:
    plan = plan_for("claude:\n  base_url: https://gw.example.com/anthropic\nnetwork:\n  policy: strict\n",
                    home=tmp_path, scratch_root=tmp_path, grants=(ANTHROPIC,), proxy_ca=tmp_path / "ca.crt")
    assert plan.agent.env["ANTHROPIC_BASE_URL"] == "https://gw.example.com/anthropic"
    assert plan.policy is not None
    assert plan.policy.admits_host("gw.example.com").allowed
    assert plan.proxy is not None and plan.proxy.registration.host_ports == ()


def test_without_an_anthropic_grant_the_endpoint_is_unused_and_the_user_is_told(tmp_path: Path) -> None:
    plan = plan_for("claude:\n  base_url: http://localhost:8787\n", home=tmp_path, scratch_root=tmp_path,
                    grants=(GITHUB,), proxy_ca=tmp_path / "ca.crt")
    assert "ANTHROPIC_BASE_URL" not in plan.agent.env
    assert any("claude.base_url is not used" in note for note in plan_caveats(plan))


def test_a_base_url_moat_cannot_route_is_a_located_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_for("name: x\nclaude:\n  base_url: https://localhost:8787\n", home=tmp_path, scratch_root=tmp_path,
                 grants=(ANTHROPIC,), proxy_ca=tmp_path / "ca.crt")
    [problem] = caught.value.problems
    assert problem.line == 3 and "plain http://" in problem.message


def test_moat_yaml_cannot_set_the_variable_itself_beside_base_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        plan_for("claude:\n  base_url: http://localhost:8787\nenv:\n  ANTHROPIC_BASE_URL: http://elsewhere\n",
                 home=tmp_path, scratch_root=tmp_path, grants=(ANTHROPIC,), proxy_ca=tmp_path / "ca.crt")
