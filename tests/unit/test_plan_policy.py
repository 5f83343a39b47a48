"""Network policy as planned and run: strict mode on Docker is a pod (a holder with no network but
loopback, its relay the only way out), the policy travels to the proxy in the run's registration, and a
holder that cannot relay stops the run before the agent exists, leaving nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moat.cli.planview import render_plan
from moat.errors import ConfigError, MoatError, UsageError
from moat.plan.pod import RELAY_MOUNT, holder_image
from moat.plan.proxy import RELAY_PORT
from moat.policy.rules import NetworkPolicy
from moat.proxy.paths import ProxyPaths
from tests.unit.fakes import FakeProxy, FakeRuntime
from tests.unit.test_run_proxy import REDIS, grant_plan, run_plan

STRICT = REDIS + "network:\n  policy: strict\n  rules:\n    - pypi.org\n    - api.example.com: ['allow GET /v1/**']\n"


def policy_of(plan: Any) -> NetworkPolicy:
    assert plan.proxy is not None
    return NetworkPolicy.from_json(plan.proxy.registration.extra["policy"])


def test_a_strict_docker_run_is_a_pod_with_no_network_but_loopback(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, STRICT, invoker=(1000, 1000))
    holder = plan.holder
    assert holder is not None and holder.role == "holder" and holder.network == "none"
    assert holder.image == holder_image().tag
    # Its one mount: the directory holding the proxy socket alone (not the control socket, not the CA key).
    [mount] = holder.mounts
    assert (mount.source, mount.target, mount.read_only) == (str(ProxyPaths(tmp_path).relay_dir), RELAY_MOUNT, True)
    assert holder.command is not None and holder.command[0] == "socat"
    assert f"TCP-LISTEN:{RELAY_PORT},bind=127.0.0.1" in holder.command[3]
    assert holder.user == "1000:1000" and holder.cap_drop == ("ALL",) and holder.no_new_privileges
    assert holder.extra_hosts == (("redis", "127.0.0.1"),)  # services by name, on loopback
    for spec in (plan.agent, *(s.container for s in plan.services)):
        assert spec.network == f"container:{holder.name}"
        # Docker refuses these on a joined container: the holder has them.
        assert not spec.extra_hosts and not spec.aliases and spec.hostname is None and not spec.dns
    assert plan.relay is None
    assert plan.proxy is not None and plan.proxy.route == "relay"
    assert "HTTPS_PROXY" not in plan.env  # known once the proxy listens
    assert plan.proxy.proxy_env(None)["HTTPS_PROXY"].endswith(f"@127.0.0.1:{RELAY_PORT}")


def test_the_policy_reaches_the_proxy_with_the_grants_hosts(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, STRICT, allow_hosts=("*.npmjs.org",))
    policy = policy_of(plan)
    assert policy.strict
    assert [h.host for h in policy.hosts] == ["pypi.org", "api.example.com", "*.npmjs.org"]
    assert policy.granted == ("api.github.com",)  # the grant's host: reachable in strict mode (Go forgets)
    assert policy.decide("api.github.com", "GET", "/user").allowed
    assert policy.decide("registry.npmjs.org", "GET", "/x").allowed
    assert not policy.decide("api.example.com", "POST", "/v1/x").allowed
    assert not policy.decide("evil.example", "GET", "/").allowed
    assert plan.to_dict()["policy"] == policy.to_json()
    assert plan.to_dict()["holder"]["network"] == "none"


def test_strict_without_grants_still_goes_through_the_proxy(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "network:\n  policy: strict\n", grants=())
    assert plan.proxy is not None and plan.holder is not None
    assert policy_of(plan) == NetworkPolicy(True, (), ())


def test_a_permissive_run_is_a_pod_on_its_own_network_with_no_policy(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "container:\n  dns: [192.0.2.53]\n", grants=())
    assert plan.proxy is None and plan.policy is None
    holder = plan.holder
    assert holder is not None and holder.network == plan.network == f"moat-{plan.run_id}"
    assert holder.command == ("sleep", "infinity") and holder.mounts == ()  # no relay: ordinary egress
    assert holder.extra_hosts == (("redis", "127.0.0.1"),) and holder.dns == ("192.0.2.53",)
    for spec in (plan.agent, *(s.container for s in plan.services)):
        assert spec.network == f"container:{holder.name}"
        assert not spec.extra_hosts and not spec.aliases and spec.hostname is None and not spec.dns
    with_grant = grant_plan(tmp_path, REDIS)
    assert with_grant.proxy is not None and "policy" not in with_grant.proxy.registration.extra
    assert with_grant.proxy.route == "gateway"
    assert with_grant.holder is not None
    assert ("moat-proxy", "host-gateway") in with_grant.holder.extra_hosts  # for every container of the pod


def test_permissive_rules_are_enforced_by_the_proxy_without_a_pod(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "network:\n  rules:\n    - api.github.com: ['deny DELETE /**']\n",
                      grants=())
    assert plan.holder is not None and plan.holder.network == plan.network  # a pod with ordinary egress
    assert plan.proxy is not None and plan.proxy.route == "gateway"
    policy = policy_of(plan)
    assert not policy.strict
    assert not policy.decide("api.github.com", "DELETE", "/repos/x").allowed
    assert policy.decide("elsewhere.example", "DELETE", "/").allowed


def test_a_strict_sandbox_run_uses_its_own_namespace_and_relay(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, STRICT, runtime="sandbox")
    assert plan.holder is None and plan.relay is not None
    assert plan.relay.mounts[0].source == str(ProxyPaths(tmp_path).proxy_socket)
    assert policy_of(plan).strict


@pytest.mark.parametrize("host", ["https://x.example", "api.*.example", "x.example:443", ""])
def test_a_bad_allow_host_is_a_usage_error(tmp_path: Path, host: str) -> None:
    with pytest.raises(UsageError, match="--allow-host"):
        grant_plan(tmp_path, STRICT, allow_hosts=(host,))


def test_strict_leaves_the_agent_no_dns_to_ask(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, STRICT + "container:\n  dns: [192.0.2.53]\n")
    assert plan.agent.dns == ()


def test_the_dry_run_never_calls_a_permissive_pod_closed(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "network:\n  rules:\n    - api.github.com: ['deny DELETE /**']\n")
    text = render_plan(plan)
    assert "permissive, with rules" in text and "no network but loopback" not in text
    assert f"on the run's network moat-{plan.run_id} (ordinary egress)" in text


def test_the_dry_run_shows_the_policy_and_the_pod(tmp_path: Path) -> None:
    text = render_plan(grant_plan(tmp_path, STRICT))
    assert "Network policy  strict" in text
    assert "pypi.org" in text and "api.github.com (grant)" in text
    assert "allow GET /v1/**" in text
    assert "moat-pod-" in text and "no network but loopback" in text


@pytest.mark.parametrize(("rules", "why"), [
    ("- api.github.com: ['alow GET /x']", "did you mean 'allow'"),
    ("- api.github.com: ['allow GTE /x']", "did you mean 'GET'"),
    ("- api.github.com: ['allow GET repos']", "must start with /"),
    ("- api.github.com: ['allow GET /a*b']", "whole path segment"),
    ("- 'api.*.com'", "a wildcard may only start"),
    ("- https://api.github.com", "give the host name only"),
])
def test_a_rule_that_does_not_parse_is_a_located_config_error(tmp_path: Path, rules: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        grant_plan(tmp_path, f"network:\n  policy: strict\n  rules:\n    {rules}\n")
    [problem] = info.value.problems
    assert problem.line == 4 and why in problem.message


# --- the run ----------------------------------------------------------------------------------------


def test_a_strict_run_starts_its_holder_first_and_removes_it_last(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()
    runtime.images_present.add(holder_image().tag)
    created: list[str] = []
    runtime.on_create = lambda c: created.append(c.spec.role)
    removed: list[str] = []
    remove = runtime.remove_container

    def removing(container_id: str) -> None:
        removed.append(runtime.containers[container_id].spec.role if container_id in runtime.containers else "?")
        remove(container_id)

    runtime.remove_container = removing  # type: ignore[method-assign]
    plan = grant_plan(tmp_path, STRICT)
    outcome, error, record = run_plan(plan, runtime, proxy, tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0
    assert created[0] == "holder" and created.index("agent") > created.index("service")
    assert removed[-1] == "holder" and set(removed) == {"holder", "service", "agent"}
    assert not runtime.networks  # no engine network at all
    assert ("listen", "172.17.0.1") not in proxy.calls  # no gateway listener: the relay is the way
    assert runtime.left() == [] and proxy.registered == {}
    assert record["network"] == f"container:{plan.holder.name}" if plan.holder else False


def test_the_pod_image_is_built_once_when_missing(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()
    outcome, error, _ = run_plan(grant_plan(tmp_path, STRICT), runtime, proxy, tmp_path)
    assert error is None and outcome is not None
    assert holder_image().tag in runtime.images_present
    builds = [c for c in runtime.calls if c[0] == "build_image"]
    outcome, error, _ = run_plan(grant_plan(tmp_path, STRICT), runtime, proxy, tmp_path)
    assert error is None and [c for c in runtime.calls if c[0] == "build_image"] == builds  # not again


def test_a_holder_that_never_relays_fails_the_run_before_the_agent(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from moat.run import startup

    monkeypatch.setattr(startup, "RELAY_TIMEOUT", 0.3)
    runtime, proxy = FakeRuntime(), FakeProxy()
    runtime.images_present.add(holder_image().tag)
    runtime.holder_log = "socat[1] E bind: Address in use\n"
    outcome, error, _ = run_plan(grant_plan(tmp_path, STRICT), runtime, proxy, tmp_path)
    assert outcome is None and isinstance(error, MoatError)
    assert "did not listen" in error.message
    assert not [c for c in runtime.calls if c == ("release", "agent")]
    assert runtime.left() == [] and proxy.registered == {}


# --- the agent's context file -------------------------------------------------------------------------


def context_of(plan: Any) -> str:
    [(_, text)] = [(path, text) for path, text in plan.agent.files if path.endswith("moat-context.md")]
    return text


def test_the_agent_is_told_its_limits_without_a_single_secret(tmp_path: Path) -> None:
    from tests.unit.test_run_proxy import GITHUB, TOKEN

    plan = grant_plan(tmp_path, STRICT, grants=(GITHUB,))
    text = context_of(plan)
    assert "Policy: **strict**" in text
    for host in ("- pypi.org", "- api.example.com (allow GET /v1/**", "- api.github.com"):
        assert host in text
    assert "X-Moat-Blocked" in text and "407" in text
    assert "- github: api.github.com" in text and "GH_TOKEN" in text
    assert "- redis: MOAT_REDIS_HOST, MOAT_REDIS_PASSWORD, MOAT_REDIS_PORT, MOAT_REDIS_URL" in text
    for secret in (*plan.secrets, TOKEN, plan.proxy.token if plan.proxy else ""):
        assert secret not in text
    targets = {m.target for m in plan.agent.mounts if m.source.endswith("moat-context.md")}
    assert targets == {"/etc/moat/moat-context.md", "/etc/claude-code/CLAUDE.md"}
    assert all(m.read_only for m in plan.agent.mounts if m.source.endswith("moat-context.md"))
    assert plan.env["MOAT_CONTEXT"] == "/etc/moat/moat-context.md"


def test_the_sandbox_agent_finds_its_context_in_its_private_tmp(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS, grants=(), runtime="sandbox")
    assert "Policy: permissive: every host can be reached." in context_of(plan)
    assert [m.target for m in plan.agent.mounts if m.source.endswith("moat-context.md")] == \
        ["/tmp/moat-grants/moat-context.md"]
    assert plan.env["MOAT_CONTEXT"] == "/tmp/moat-grants/moat-context.md"


def test_host_ports_are_named_in_the_context(tmp_path: Path) -> None:
    text = context_of(grant_plan(tmp_path, STRICT + "  host: [8080, 9090]\n", grants=()))
    assert "as `moat-host` (MOAT_HOST_GATEWAY): 8080, 9090" in text


def test_strict_says_what_it_means_for_dns_and_provisioning(tmp_path: Path) -> None:
    from moat.plan.policy import plan_caveats

    text = ("dependencies: [ollama]\nservices:\n  ollama:\n    models: [tiny:1b]\n"
            "container:\n  dns: [192.0.2.53]\nnetwork:\n  policy: strict\n")
    notes = plan_caveats(grant_plan(tmp_path, text, grants=()))
    assert any(n.startswith("container.dns is not used") for n in notes)
    assert any(n.startswith("services.ollama.models: a strict run's services have no way out") for n in notes)
    assert plan_caveats(grant_plan(tmp_path, text.replace("strict", "permissive"), grants=())) == []


def test_a_run_leaves_no_scratch_directory(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()
    plan = grant_plan(tmp_path, REDIS, grants=())
    outcome, error, _ = run_plan(plan, runtime, proxy, tmp_path)
    assert error is None and outcome is not None
    assert not plan.scratch.exists()  # the context file's directory, and the run's (review)
