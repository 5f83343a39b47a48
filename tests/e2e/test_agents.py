"""The agent commands end to end: each agent CLI, installed from the npm registry into a real image,
run with ``-p`` under a strict policy against a local stand-in of its model API.

The "internet" is local: ``tests.llm_standin`` answers for api.anthropic.com, api.openai.com … on
127.0.0.1, reached through a stand-in corporate proxy that moat's proxy is told about (HTTPS_PROXY in
moat's environment). The agents use their real API hosts; the policy admits only the grant's host;
their telemetry and update checks are off. Nothing leaves this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moat.agents.sessions import claude_project_dir, sessions_dir
from tests.helpers import WORKSPACE_UID, moat_command, run_moat, runs, wait_for, write_workspace
from tests.llm_standin import REPLY_PREFIX, LlmStandIn, llm_standin
from tests.upstream import StandIn, git_http_server, make_ca, stand_in_proxy

pytestmark = pytest.mark.usefixtures("engine")

# Pinned, so that what the test runs does not change under it (moat's catalog takes npm's latest).
CLAUDE_CODE = "claude-code@2.1.332"
ANTHROPIC_KEY = "sk-ant-api03-e2eRealKey0123456789abcdefABCDEF"
OPENAI_KEY = "sk-e2eRealOpenAIKey0123456789abcdefABCDEF0123456789"
HOST_CAS = Path("/usr/local/share/ca-certificates")  # this machine's TLS-inspecting egress proxy's CA
BUILD_TIMEOUT = 900  # a cold build downloads an agent CLI from the npm registry


@dataclass
class ModelApis:
    llm: LlmStandIn
    proxy: StandIn  # the corporate proxy moat's proxy goes through
    env: dict[str, str]

    @property
    def hosts(self) -> list[str]:
        return [target for target, _ in self.proxy.connects]


@pytest.fixture
def model_apis(tmp_path: Path, moat_home: Path) -> Iterator[ModelApis]:
    ca = make_ca(tmp_path / "upstream-ca")
    with llm_standin(ca) as llm, stand_in_proxy(llm.port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        # HOME: the test's own (nothing an agent command does may touch the user's home).
        env = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "SSL_CERT_FILE": str(ca.cert_file), "SSL_CERT_DIR": "",
               "NO_PROXY": "", "HOME": str(tmp_path / "host-home")}
        if any(HOST_CAS.glob("*.crt")):  # npm's downloads during the image build go through it
            env["MOAT_BUILD_CA_CERTS"] = str(HOST_CAS)
        yield ModelApis(llm, proxy, env)
        stopped = run_moat(["proxy", "stop"])
        assert stopped.code == 0, stopped.output


def _grant(provider: str, token: str) -> None:
    result = run_moat(["grant", provider, "--token-env", "E2E_TOKEN", "--no-validate"], env={"E2E_TOKEN": token})
    assert result.code == 0, result.output


def _workspace(path: Path, config: str) -> Path:
    workspace = write_workspace(path, config)
    if os.getuid() == 0:  # the agent runs as the workspace's owner: an ordinary user, as on a laptop
        shutil.chown(workspace, WORKSPACE_UID, WORKSPACE_UID)
        shutil.chown(workspace / "moat.yaml", WORKSPACE_UID, WORKSPACE_UID)
    return workspace


def _nowhere(secret: str, home: Path, output: str) -> None:
    assert secret not in output
    for path in home.rglob("*"):
        if path.is_file() and not path.name.endswith(".enc") and path.suffix != ".sock":
            assert secret.encode() not in path.read_bytes(), path


def _recorded_output(home: Path) -> str:
    [run] = runs(home)
    logs = run_moat(["logs", run["id"]])
    assert logs.code == 0, logs.output
    return logs.stdout


GEMINI_KEY = "AIzaE2eRealGeminiKey0123456789abcdefABCD"
GITHUB_TOKEN = "github_pat_11E2EREALTOKEN0123456789abcdefABCDEF"
ANTHROPIC = frozenset({"api.anthropic.com:443"})
PONG = "--version: reply with the word PONG"  # a prompt that looks like an option is still a prompt


@dataclass(frozen=True)
class AgentCase:
    agent: str
    provider: str  # the grant it picks
    key: str
    config: str  # moat.yaml's dependencies line, if any
    path: str  # what it calls on the model API
    header: str  # where the proxy puts the key
    value: str
    hosts: frozenset[str]  # the only hosts it may reach


CASES = [
    AgentCase("claude", "anthropic", ANTHROPIC_KEY, f"dependencies: [node@22, {CLAUDE_CODE}]\n", "/v1/messages",
              "x-api-key", ANTHROPIC_KEY, ANTHROPIC),
    AgentCase("codex", "openai", OPENAI_KEY, "", "/v1/responses", "Authorization", f"Bearer {OPENAI_KEY}",
              frozenset({"api.openai.com:443"})),
    AgentCase("gemini", "gemini", GEMINI_KEY, "", "generateContent", "x-goog-api-key", GEMINI_KEY,
              frozenset({"generativelanguage.googleapis.com:443"})),
    # pi 1.5 depends on a package the npm registry reachable here does not serve (marked-cjk-friendly).
    AgentCase("pi", "anthropic", ANTHROPIC_KEY, "dependencies: [node, pi-cli@1.3.0]\n", "/v1/messages", "x-api-key",
              ANTHROPIC_KEY, ANTHROPIC),
    # Copilot asks GitHub who the user is and where its API is, then calls that API with the same token.
    AgentCase("copilot", "github", GITHUB_TOKEN, "dependencies: [node, copilot-cli@1.0.102]\n", "/responses",
              "Authorization", f"Bearer {GITHUB_TOKEN}",
              frozenset({"api.github.com:443", "api.individual.githubcopilot.com:443"})),
]


@pytest.mark.parametrize("case", CASES, ids=[c.agent for c in CASES])
def test_the_agent_answers_through_the_proxy_with_the_key_it_never_held(model_apis: ModelApis, moat_home: Path,
                                                                          tmp_path: Path, case: AgentCase) -> None:
    _grant(case.provider, case.key)
    workspace = _workspace(tmp_path / "ws", f"name: agent-{case.agent}\n{case.config}network:\n  policy: strict\n")
    result = run_moat([case.agent, str(workspace), "-p", PONG], env=model_apis.env, timeout=BUILD_TIMEOUT)
    assert result.code == 0, result.output
    assert f"{REPLY_PREFIX}{PONG}" in result.stdout
    calls = model_apis.llm.requests(case.path)
    assert calls, model_apis.llm.seen
    assert all(call.header(case.header) == case.value for call in calls)  # injected by moat's proxy
    assert PONG in model_apis.llm.prompts()
    # Only the model API was reached: no telemetry, no update check, nothing the policy let through.
    assert set(model_apis.hosts) == case.hosts, model_apis.hosts
    assert f"{REPLY_PREFIX}{PONG}" in _recorded_output(moat_home)
    _nowhere(case.key, moat_home, result.output)


@pytest.mark.parametrize("agent, provider, key, path, header, value", [
    ("claude", "anthropic", ANTHROPIC_KEY, "/v1/messages", "x-api-key", ANTHROPIC_KEY),
    ("codex", "openai", OPENAI_KEY, "/v1/responses", "Authorization", f"Bearer {OPENAI_KEY}"),
])
def test_the_agent_examples_run_as_their_comments_say(model_apis: ModelApis, moat_home: Path,
                                                      example: Callable[[str], Path], agent: str, provider: str,
                                                      key: str, path: str, header: str, value: str) -> None:
    _grant(provider, key)
    workspace = example(f"agent-{agent}")
    if os.getuid() == 0:
        for item in (workspace, *workspace.iterdir()):
            shutil.chown(item, WORKSPACE_UID, WORKSPACE_UID)
    prompt = "What does greet.py print?"
    result = run_moat([agent, str(workspace), "-p", prompt], env=model_apis.env, timeout=BUILD_TIMEOUT)
    assert result.code == 0, result.output
    assert f"{REPLY_PREFIX}{prompt}" in result.stdout
    calls = model_apis.llm.requests(path)
    assert calls and all(call.header(header) == value for call in calls)
    [run] = runs(moat_home)
    assert run["name"] == f"agent-{agent}" and run["exit_code"] == 0
    _nowhere(key, moat_home, result.output)


def test_claude_sessions_stay_on_the_host_and_the_next_run_resumes_them(model_apis: ModelApis, moat_home: Path,
                                                                        tmp_path: Path) -> None:
    _grant("anthropic", ANTHROPIC_KEY)
    workspace = _workspace(tmp_path / "ws", f"name: sessions\ndependencies: [node@22, {CLAUDE_CODE}]\n"
                                            "network:\n  policy: strict\n")
    first = run_moat(["claude", str(workspace), "-p", "first question"], env=model_apis.env, timeout=BUILD_TIMEOUT)
    assert first.code == 0, first.output
    projects = claude_project_dir(workspace, moat_home)
    [transcript] = projects.glob("*.jsonl")  # the run's session, kept on the host under MOAT_HOME
    assert "first question" in transcript.read_text()
    if os.getuid() == 0:
        assert projects.stat().st_uid == WORKSPACE_UID  # moat made it; the agent's uid writes in it

    def conversation() -> str:
        return model_apis.llm.requests("/v1/messages")[-1].body.decode()

    # -r with the run's name: its session, found by when it was written, continues.
    resumed = run_moat(["claude", str(workspace), "-r", "sessions", "-p", "second question"], env=model_apis.env)
    assert resumed.code == 0, resumed.output
    assert "first question" in conversation() and "second question" in conversation()
    assert f"{REPLY_PREFIX}second question" in resumed.stdout
    # -c: the workspace's latest session.
    continued = run_moat(["claude", str(workspace), "-c", "-p", "third question"], env=model_apis.env)
    assert continued.code == 0, continued.output
    assert "second question" in conversation() and "third question" in conversation()
    _nowhere(ANTHROPIC_KEY, moat_home, first.output + resumed.output + continued.output)


def test_exec_and_join_enter_a_running_agents_container(model_apis: ModelApis, moat_home: Path,
                                                        tmp_path: Path) -> None:
    _grant("anthropic", ANTHROPIC_KEY)
    workspace = _workspace(tmp_path / "ws", f"name: busy\ndependencies: [node@22, {CLAUDE_CODE}]\n"
                                            "network:\n  policy: strict\n")
    model_apis.llm.delays["a long task"] = 60  # the run's own Claude Code is still working meanwhile
    started = run_moat(["claude", str(workspace), "-d", "-p", "a long task"], env=model_apis.env,
                       timeout=BUILD_TIMEOUT)
    assert started.code == 0, started.output
    run_id = started.stdout.split()[0]
    wait_for(lambda: model_apis.llm.requests("/v1/messages"), what="the first session's request")
    try:
        show = "id -u; pwd; echo run=$MOAT_RUN_ID key=$ANTHROPIC_API_KEY"
        entered = run_moat(["exec", run_id, "--", "sh", "-c", show])
        assert entered.code == 0, entered.output
        assert entered.stdout.split() == [str(WORKSPACE_UID if os.getuid() == 0 else os.getuid()), "/workspace",
                                          f"run={run_id}", "key=moat-proxy-injected"]
        assert run_moat(["exec", run_id, "--", "sh", "-c", "exit 7"]).code == 7  # its exit code is moat's
        piped = subprocess.run([*moat_command("exec", run_id, "--", "cat")], input="through stdin\n", text=True,
                               capture_output=True, timeout=60, check=False)
        assert piped.stdout == "through stdin\n", piped.stderr
        joined = run_moat(["join", run_id, "claude", "-p", "a second question"], env=model_apis.env)
        assert joined.code == 0, joined.output
        assert f"{REPLY_PREFIX}a second question" in joined.stdout
        wrong = run_moat(["join", run_id, "codex", "-p", "x"])
        assert wrong.code == 2 and "runs claude, not codex" in wrong.stderr
    finally:
        assert run_moat(["stop", run_id]).code == 0
    gone = run_moat(["exec", run_id, "--", "true"])
    assert gone.code == 2 and "not running" in gone.stderr
    _nowhere(ANTHROPIC_KEY, moat_home, started.output)


def test_claude_base_url_on_the_host_gets_the_key_through_the_proxy(model_apis: ModelApis, moat_home: Path,
                                                                      tmp_path: Path) -> None:
    """The Go tool's llm-proxy example: claude.base_url names an LLM proxy on the host's loopback
    (here a plain-HTTP stand-in); the agent reaches it as moat-host under a strict policy, the proxy
    injects the key there, and api.anthropic.com is never called."""
    _grant("anthropic", ANTHROPIC_KEY)
    with llm_standin(None) as local:
        workspace = _workspace(tmp_path / "ws", f"name: llm-proxy\ndependencies: [node@22, {CLAUDE_CODE}]\n"
                                                f"claude:\n  base_url: http://localhost:{local.port}\n"
                                                "network:\n  policy: strict\n")
        result = run_moat(["claude", str(workspace), "-p", PONG], env=model_apis.env, timeout=BUILD_TIMEOUT)
        assert result.code == 0, result.output
        assert f"{REPLY_PREFIX}{PONG}" in result.stdout
        calls = local.requests("/v1/messages")
        assert calls, local.seen
        assert all(call.header("x-api-key") == ANTHROPIC_KEY for call in calls)
        assert PONG in local.prompts()
    assert model_apis.hosts == []  # nothing went to the real API host
    assert not model_apis.llm.seen
    _nowhere(ANTHROPIC_KEY, moat_home, result.output)


SKILL = "moat-e2e-greeting"
MARKETPLACE = {
    ".claude-plugin/marketplace.json": '{"name": "moat-standin", "owner": {"name": "moat tests"}, "plugins":'
                                       ' [{"name": "hello", "source": "./plugins/hello", "description": "stand-in"}]}',
    "plugins/hello/.claude-plugin/plugin.json": '{"name": "hello", "version": "1.0.0", "description": "stand-in"}',
    f"plugins/hello/skills/{SKILL}/SKILL.md": f"---\nname: {SKILL}\ndescription: Greets the moat end-to-end"
                                               " test\n---\nSay hello.\n",
}


@pytest.fixture
def marketplace_repo(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A stand-in plugin marketplace: a git repository served over git's smart HTTP protocol on
    this machine's loopback (GitHub is not reachable here). Yields its URL and the paths asked for."""
    source, bare = tmp_path / "market-src", tmp_path / "served" / "market.git"
    for relative, text in MARKETPLACE.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(text)
    git = ["git", "-c", "user.name=moat", "-c", "user.email=moat@localhost", "-c", "init.defaultBranch=main"]
    for command in (["init", "-q", str(source)], ["-C", str(source), "add", "."],
                    ["-C", str(source), "commit", "-q", "-m", "stand-in marketplace"],
                    ["clone", "-q", "--bare", str(source), str(bare)], ["-C", str(bare), "update-server-info"]):
        subprocess.run([*git, *command], check=True, capture_output=True)
    with git_http_server(tmp_path / "served") as (port, asked):
        yield f"http://127.0.0.1:{port}/market.git", asked


def test_claude_plugins_from_a_marketplace_are_built_into_the_image_and_enabled(
        model_apis: ModelApis, moat_home: Path, tmp_path: Path, marketplace_repo: tuple[str, list[str]]) -> None:
    """The Go tool's agent-claude example, its marketplace a local stand-in: cloned on the host, the
    plugin installed into the image, and its skill offered to the model under a strict policy."""
    url, asked = marketplace_repo
    _grant("anthropic", ANTHROPIC_KEY)
    workspace = _workspace(tmp_path / "ws", f"name: plugins\ndependencies: [node@22, {CLAUDE_CODE}]\n"
                                            "claude:\n  plugins:\n    hello@moat-standin: true\n"
                                            f"  marketplaces:\n    moat-standin:\n      source: git\n      url: {url}\n"
                                            "network:\n  policy: strict\n")
    result = run_moat(["claude", str(workspace), "-p", "which skills do you have?"], env=model_apis.env,
                      timeout=BUILD_TIMEOUT)
    assert result.code == 0, result.output
    assert any(path.endswith("/info/refs?service=git-upload-pack") or path.endswith("/info/refs")
               for path in asked), asked  # cloned by moat, on the host
    calls = model_apis.llm.requests("/v1/messages")
    assert any(SKILL.encode() in call.body for call in calls), "the plugin's skill never reached the model"
    assert set(model_apis.hosts) == ANTHROPIC, model_apis.hosts
    # A second run reuses the image: nothing is cloned again.
    asked.clear()
    again = run_moat(["claude", str(workspace), "-p", "again"], env=model_apis.env, timeout=BUILD_TIMEOUT)
    assert again.code == 0, again.output
    assert asked == []


@pytest.mark.parametrize("case", [c for c in CASES if c.agent in ("codex", "gemini")], ids=lambda c: c.agent)
def test_codex_and_gemini_sessions_stay_on_the_host_for_the_next_run(model_apis: ModelApis, moat_home: Path,
                                                                     tmp_path: Path, case: AgentCase) -> None:
    """The transcript a run's agent wrote outlives the run, in the workspace's own directory under
    MOAT_HOME (never the host's ~/.codex or ~/.gemini), where the next run's agent finds it."""
    _grant(case.provider, case.key)
    workspace = _workspace(tmp_path / "ws", f"name: kept-{case.agent}\n{case.config}network:\n  policy: strict\n")
    result = run_moat([case.agent, str(workspace), "-p", "remember the word OSPREY"], env=model_apis.env,
                      timeout=BUILD_TIMEOUT)
    assert result.code == 0, result.output
    kept = sessions_dir(case.agent, workspace, moat_home)
    written = [p for p in kept.rglob("*") if p.is_file() and b"OSPREY" in p.read_bytes()]
    assert written, sorted(str(p.relative_to(kept)) for p in kept.rglob("*"))
    assert not (tmp_path / "host-home" / f".{case.agent}").exists()  # the host's own directory is untouched
    # A second run's agent writes beside the first's (the same directory, linked where it looks).
    again = run_moat([case.agent, str(workspace), "-p", "and the word HERON"], env=model_apis.env,
                     timeout=BUILD_TIMEOUT)
    assert again.code == 0, again.output
    assert any(b"HERON" in p.read_bytes() for p in kept.rglob("*") if p.is_file())
    assert all(p.exists() for p in written)
    _nowhere(case.key, moat_home, result.output)


READ_ONLY = """scope: llm-gateway
mode: enforce
rules:
  - name: deny-edit
    match:
      operation: "llm.tool_use"
      when: "params.name == 'edit'"
    action: deny
    message: "File editing is blocked by policy."
"""


def test_claude_llm_gateway_denies_the_tool_use_its_keep_rules_forbid(model_apis: ModelApis, moat_home: Path,
                                                                     tmp_path: Path) -> None:
    """The Go tool's policy example: Anthropic's answer asking for Edit is judged by the run's Keep
    rules in moat's proxy and replaced by a 400 policy_denied — the file stays as it was; an answer
    asking for another tool passes."""
    _grant("anthropic", ANTHROPIC_KEY)
    config = (f"name: policy-demo\ndependencies: [node@22, {CLAUDE_CODE}]\n"
              "claude:\n  llm-gateway:\n    policy: .keep/read-only.yaml\nnetwork:\n  policy: strict\n")
    workspace = _workspace(tmp_path / "ws", config)
    (workspace / ".keep").mkdir()
    (workspace / ".keep" / "read-only.yaml").write_text(READ_ONLY)
    denied = run_moat(["claude", str(workspace), "-p", "call Edit"], env=model_apis.env, timeout=BUILD_TIMEOUT)
    assert "Policy denied: deny-edit. File editing is blocked by policy." in denied.output
    assert (workspace / "moat.yaml").read_text() == config  # the edit never reached Claude Code
    allowed = run_moat(["claude", str(workspace), "-p", "call Glob"], env=model_apis.env, timeout=BUILD_TIMEOUT)
    assert allowed.code == 0, allowed.output
    assert "Policy denied" not in allowed.output
    [first, _] = sorted(runs(moat_home), key=lambda r: r["created_at"])
    trace = [json.loads(line) for line in (moat_home / "runs" / first["id"] / "network.jsonl").read_text().splitlines()]
    assert any(line.get("blocked") and line.get("status_code") == 400 for line in trace), trace
