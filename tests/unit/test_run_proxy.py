"""A run with grants: planned with placeholders and moat's CA, registered with the proxy before its agent
exists, told the proxy's address, and unregistered in teardown — whatever fails."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from moat.credentials.rules import GrantRules, HeaderInjection, Registration, Substitution
from moat.errors import ConfigError, MoatError, UsageError
from moat.plan.model import Plan
from moat.plan.proxy import PROXY_HOST, RELAY_PORT, ResolvedGrant
from moat.run.execution import Outcome, Run
from moat.run.report import PlainReporter
from moat.run.store import RunStore
from moat.runtime.base import OutputChunk
from tests.unit.fakes import FakeProxy, FakeRuntime
from tests.unit.support import plan_for

TOKEN = "ghp_realTokenValue0123456789abcdefABCDEF"
GITHUB = ResolvedGrant(
    name="github",
    rules=GrantRules("github", injections=(
        HeaderInjection(("api.github.com",), (("Authorization", f"Bearer {TOKEN}"),)),
    )),
    env={"GH_TOKEN": "ghp_moatProxyInjectedPlaceholder000000000000"},
)
TELEGRAM = ResolvedGrant(
    name="telegram",
    rules=GrantRules("telegram", substitutions=(Substitution(("api.telegram.org",), "moat-0123456789abcdef",
                                                             "123:telegramSecret"),)),
    env={"TELEGRAM_BOT_TOKEN": "moat-0123456789abcdef"},
)
REDIS = "dependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"


def grant_plan(home: Path, text: str = REDIS, grants: tuple[ResolvedGrant, ...] = (GITHUB,), **request: Any) -> Plan:
    ca = home / "proxy" / "ca" / "moat-ca.crt"
    return plan_for(text, command=("sh", "-c", "echo hi"), home=home, scratch_root=home / "scratch",
                    grants=grants, proxy_ca=ca, **request)


class Quiet:
    """A terminal that hears nothing (the reporter's stream)."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def run_plan(plan: Plan, runtime: FakeRuntime, proxy: FakeProxy, home: Path
             ) -> tuple[Outcome | None, MoatError | None, dict[str, Any]]:
    run = Run(plan, runtime, RunStore(home), PlainReporter(Quiet()), proxy=proxy)  # type: ignore[arg-type]
    try:
        return run.execute(), None, json.loads((home / "runs" / plan.run_id / "metadata.json").read_text())
    except MoatError as exc:
        return None, exc, json.loads((home / "runs" / plan.run_id / "metadata.json").read_text())


# --- the plan ---------------------------------------------------------------------------------------


def test_the_agent_gets_placeholders_the_ca_and_no_credential(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, grants=(GITHUB, TELEGRAM))
    env = plan.env
    assert env["GH_TOKEN"].startswith("ghp_moat") and env["TELEGRAM_BOT_TOKEN"] == "moat-0123456789abcdef"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CURL_CA_BUNDLE"):
        assert env[name] == "/etc/ssl/certs/moat-ca/ca.crt"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1,redis"  # services stay direct
    assert (env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == ("http.proxyAuthMethod", "basic")
    assert env["MOAT_HOST_GATEWAY"] == "moat-host"
    assert "HTTPS_PROXY" not in env  # the port is the proxy's: known when it listens
    ca = [m for m in plan.agent.mounts if m.target == "/etc/ssl/certs/moat-ca/ca.crt"]
    assert len(ca) == 1 and ca[0].read_only and ca[0].source.endswith("moat-ca.crt")
    assert plan.holder is not None and plan.agent.extra_hosts == ()  # the pod's holder has them, for all
    assert {"moat-proxy": "host-gateway", "moat-host": "host-gateway"}.items() <= dict(plan.holder.extra_hosts).items()
    assert plan.proxy is not None and plan.proxy.registration.trace_file == str(
        tmp_path / "runs" / plan.run_id / "network.jsonl")
    for value in (TOKEN, "123:telegramSecret", plan.proxy.token):
        assert value not in json.dumps(plan.agent.to_dict(plan.masker()))
        assert value in plan.secrets  # masked wherever they could appear


def test_the_dry_run_shows_the_grants_by_host_and_header_and_never_a_value(tmp_path: Path) -> None:
    from moat.cli.planview import render_plan

    plan = grant_plan(tmp_path, grants=(GITHUB, TELEGRAM))
    assert plan.proxy is not None
    shown = json.dumps(plan.to_dict()) + render_plan(plan)
    for value in (TOKEN, "123:telegramSecret", plan.proxy.token):
        assert value not in shown
    assert "api.github.com: sets Authorization" in render_plan(plan)
    assert "api.telegram.org: its placeholder replaced" in render_plan(plan)
    assert plan.to_dict()["proxy"]["grants"][0]["headers"][0]["set"] == ["Authorization"]


def test_each_run_has_its_own_proxy_token(tmp_path: Path) -> None:
    first, second = grant_plan(tmp_path), grant_plan(tmp_path)
    assert first.proxy is not None and second.proxy is not None
    assert first.proxy.token != second.proxy.token and len(first.proxy.token) == 64


def test_the_sandbox_reaches_the_proxy_through_its_relay(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, runtime="sandbox")
    assert plan.proxy is not None and plan.proxy.route == "relay"
    assert plan.proxy.proxy_env(None)["HTTPS_PROXY"] == f"http://moat:{plan.proxy.token}@127.0.0.1:{RELAY_PORT}"
    assert plan.agent.extra_hosts == ()
    assert plan.env["SSL_CERT_FILE"] == "/tmp/moat-ca/ca.crt"


def test_a_run_without_grants_or_host_ports_does_not_use_the_proxy(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, grants=())
    assert plan.proxy is None and "SSL_CERT_FILE" not in plan.env and plan.agent.extra_hosts == ()


def test_network_host_alone_uses_the_proxy(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "network:\n  host: [8080]\n", grants=())
    assert plan.proxy is not None and plan.proxy.registration.host_ports == (8080,)


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "NO_PROXY", "SSL_CERT_FILE", "ALL_PROXY"])
def test_moat_yaml_cannot_route_around_the_proxy(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        grant_plan(tmp_path, REDIS + f"env:\n  {name}: http://elsewhere:3128\n")
    shown = info.value.render()
    assert f"{name} is set by moat for the agent" in shown or f"{name} would send the agent around" in shown
    assert ":6:3:" in info.value.render()  # located


def test_the_command_line_cannot_route_around_the_proxy_either(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="-e HTTPS_PROXY"):
        grant_plan(tmp_path, env=("HTTPS_PROXY=http://elsewhere:3128",))


def test_resolved_secrets_reach_the_agent_and_the_masks(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "secrets:\n  API_KEY: env://API_KEY\n", secrets={"API_KEY": "s3cr3t-value"})
    assert plan.env["API_KEY"] == "s3cr3t-value" and "s3cr3t-value" in plan.secrets
    assert "s3cr3t-value" not in json.dumps(plan.to_dict())


# --- the run ----------------------------------------------------------------------------------------


def test_grants_are_registered_before_the_agent_exists_and_removed_with_the_run(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy(port=41234)
    order: list[str] = []
    runtime.on_create = lambda c: order.append(f"create:{c.spec.role}:{sorted(proxy.registered)}")
    runtime.agent.chunks = [OutputChunk("stdout", b"hi\n")]
    plan = grant_plan(tmp_path)
    assert plan.proxy is not None
    outcome, error, meta = run_plan(plan, runtime, proxy, tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0
    [agent_created] = [o for o in order if o.startswith("create:agent")]
    assert plan.run_id in agent_created  # registered first
    agent = next(c for c in runtime.calls if c[0] == "create_container" and c[1] == plan.agent.name)
    assert agent
    assert ("listen", "172.17.0.1") in proxy.calls  # the engine's host gateway
    assert proxy.registered == {} and ("unregister", plan.run_id) in proxy.calls
    assert runtime.left() == [] and meta["state"] == "exited"


def test_the_agent_is_told_where_the_proxy_listens(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy(port=40999)
    seen: dict[str, str] = {}
    runtime.on_create = lambda c: seen.update(c.spec.env) if c.spec.role == "agent" else None
    plan = grant_plan(tmp_path)
    assert plan.proxy is not None
    run_plan(plan, runtime, proxy, tmp_path)
    url = f"http://moat:{plan.proxy.token}@{PROXY_HOST}:40999"
    assert seen["HTTPS_PROXY"] == seen["HTTP_PROXY"] == seen["https_proxy"] == seen["http_proxy"] == url
    assert seen["GH_TOKEN"].startswith("ghp_moat")


def test_a_proxy_that_cannot_start_fails_the_run_before_the_agent_and_leaves_nothing(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()

    def broken() -> None:
        raise MoatError("the proxy could not start: port in use", hint="Run `moat proxy stop`.")

    proxy.faults["ensure_running"] = broken
    plan = grant_plan(tmp_path)
    outcome, error, meta = run_plan(plan, runtime, proxy, tmp_path)
    assert outcome is None and error is not None and "port in use" in error.message
    assert not runtime.by_role("agent") and runtime.left() == []
    assert meta["state"] == "failed"


def test_a_registration_that_failed_half_way_is_still_unregistered(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()

    def timeout() -> None:
        raise MoatError("the proxy did not answer the registration in time")

    proxy.faults["register"] = timeout
    plan = grant_plan(tmp_path)
    _, error, _ = run_plan(plan, runtime, proxy, tmp_path)
    assert error is not None and ("unregister", plan.run_id) in proxy.calls  # it may have got there
    assert runtime.left() == []


def test_a_cancel_while_the_proxy_starts_tears_everything_down(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()
    release = threading.Event()
    proxy.faults["ensure_running"] = lambda: release.wait(5)
    plan = grant_plan(tmp_path)
    result: dict[str, Any] = {}

    run = Run(plan, runtime, RunStore(tmp_path), PlainReporter(Quiet()), proxy=proxy)  # type: ignore[arg-type]

    def cancel() -> None:
        from tests.helpers import wait_for

        wait_for(lambda: ("ensure_running", "") in proxy.calls, timeout=5, what="the proxy's start")
        run.signals.deliver(2)
        release.set()

    threading.Thread(target=cancel, daemon=True).start()
    result["outcome"] = run.execute()
    assert result["outcome"].state == "interrupted"
    assert not runtime.by_role("agent") and runtime.left() == [] and proxy.registered == {}


def test_the_sandbox_relay_is_planned_with_the_proxys_socket_as_its_only_mount(tmp_path: Path) -> None:
    from moat.proxy.paths import ProxyPaths

    plan = grant_plan(tmp_path, runtime="sandbox")
    assert plan.relay is not None and plan.relay.role == "relay" and plan.relay.network == plan.network
    [mount] = plan.relay.mounts
    assert mount.source == str(ProxyPaths(tmp_path).proxy_socket)  # where the daemon serves it
    assert plan.relay.command == ("--listen", f"127.0.0.1:{RELAY_PORT}")
    assert grant_plan(tmp_path).relay is None  # Docker reaches the proxy at its gateway


def test_a_sandbox_run_waits_for_its_relay_before_the_agent(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()
    created: list[str] = []
    runtime.on_create = lambda c: created.append(c.spec.role)
    plan = grant_plan(tmp_path, runtime="sandbox")
    outcome, error, _ = run_plan(plan, runtime, proxy, tmp_path)
    assert error is None and outcome is not None
    assert created.index("relay") < created.index("agent")
    assert "listen" not in [op for op, _ in proxy.calls]  # no gateway listener for the sandbox
    assert runtime.left() == []


@pytest.mark.parametrize("name", ["NO_proxy", "Https_Proxy", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_KEY_3",
                                  "SSL_CERT_DIR", "curl_all_proxy", "NODE_TLS_REJECT_UNAUTHORIZED"])
def test_any_spelling_of_a_way_around_the_proxy_is_refused(tmp_path: Path, name: str) -> None:
    # Python's urllib reads NO_proxy as NO_PROXY: an exact-case check let it through (review).
    with pytest.raises(ConfigError, match=f"{name} would send the agent around"):
        grant_plan(tmp_path, REDIS + f"env:\n  {name}: x\n")
    with pytest.raises(UsageError, match=f"-e {name}"):
        grant_plan(tmp_path, env=(f"{name}=x",))
    assert grant_plan(tmp_path, REDIS + f"env:\n  {name}: x\n", grants=()).env[name] == "x"  # no proxy: theirs


@pytest.mark.parametrize("variable", ["MOAT_RUN_ID", "NO_PROXY", "no_proxy", "MOAT_REDIS_URL", "PATH"])
def test_a_providers_variable_cannot_replace_one_of_moats(tmp_path: Path, variable: str) -> None:
    bad = ResolvedGrant("acme", GrantRules("acme"), {variable: "moat-proxy-injected"})
    with pytest.raises(UsageError, match=f"grant acme: its provider sets {variable}"):
        grant_plan(tmp_path, grants=(GITHUB, bad))


def test_two_grants_cannot_set_the_same_variable(tmp_path: Path) -> None:
    twin = ResolvedGrant("gh-work", GrantRules("gh-work"), {"GH_TOKEN": "ghp_other"})
    with pytest.raises(UsageError, match="grants github and gh-work both set GH_TOKEN"):
        grant_plan(tmp_path, grants=(GITHUB, twin))


def test_the_proxy_masks_the_runs_other_secrets_in_its_trace(tmp_path: Path) -> None:
    plan = grant_plan(tmp_path, REDIS + "secrets:\n  API_KEY: env://API_KEY\n", secrets={"API_KEY": "s3cr3t-value"})
    assert plan.proxy is not None
    masked = plan.proxy.registration.secret_values()
    assert "s3cr3t-value" in masked and plan.env["MOAT_REDIS_PASSWORD"] in masked
    assert "s3cr3t-value" in Registration.from_json(plan.proxy.registration.to_json()).secret_values()


def test_a_fixed_header_of_a_grant_is_no_secret() -> None:
    oauth = "sk-ant-oat01-realOAuthToken"
    rules = GrantRules("claude", injections=(
        HeaderInjection(("api.anthropic.com",), (("Authorization", f"Bearer {oauth}"),)),
        HeaderInjection(("api.anthropic.com",), (("anthropic-beta", "oauth-2025-04-20"),)),
    ), values=(oauth,))
    assert oauth in rules.secret_values() and "oauth-2025-04-20" not in rules.secret_values()


NPM = ResolvedGrant(
    name="npm",
    rules=GrantRules("npm", injections=(HeaderInjection(("registry.npmjs.org",),
                                                        (("Authorization", "Bearer npm_realToken123"),)),),
                     values=("npm_realToken123",)),
    env={},
    files={"NPM_CONFIG_USERCONFIG": "//registry.npmjs.org/:_authToken=npm_moatProxyInjected00000000\n"},
)


@pytest.mark.parametrize(("runtime", "where"), [("docker", "/etc/moat/npm_config_userconfig"),
                                                ("sandbox", "/tmp/moat-grants/npm_config_userconfig")])
def test_a_grants_file_is_mounted_read_only_and_named_by_its_variable(tmp_path: Path, runtime: str,
                                                                     where: str) -> None:
    plan = grant_plan(tmp_path, grants=(GITHUB, NPM), runtime=runtime)
    assert plan.env["NPM_CONFIG_USERCONFIG"] == where
    [mount] = [m for m in plan.agent.mounts if m.target == where]
    assert mount.read_only and mount.source.startswith(str(plan.scratch))
    assert plan.agent.files[0] == (mount.source, NPM.files["NPM_CONFIG_USERCONFIG"])
    with pytest.raises(ConfigError):  # moat's to set, like the rest
        grant_plan(tmp_path, REDIS + "env:\n  NPM_CONFIG_USERCONFIG: /x\n", grants=(NPM,))


def test_a_grants_file_is_written_before_the_agent_and_removed_with_the_run(tmp_path: Path) -> None:
    runtime, proxy = FakeRuntime(), FakeProxy()
    plan = grant_plan(tmp_path, grants=(NPM,))
    files = plan.agent.files  # the grant's .npmrc and the agent's context file
    assert len(files) == 2
    seen: list[list[str]] = []
    runtime.on_create = lambda c: (seen.append([Path(source).read_text() for source, _ in files])
                                   if c.spec.role == "agent" else None)
    outcome, error, _ = run_plan(plan, runtime, proxy, tmp_path)
    assert error is None and outcome is not None
    assert seen == [[text for _, text in files]]  # there when the agent's container was made
    assert not any(Path(source).parent.exists() for source, _ in files) and runtime.left() == []
