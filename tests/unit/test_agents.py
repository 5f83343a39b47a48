"""The agent commands' set-up: each agent's command line, staged files and environment; how the run
adds them (dependencies, grant, the init wrapper); the build CA. No engine."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from moat.agents import AGENTS
from moat.agents.base import toml_string
from moat.agents.model import CONTEXT_ARGUMENT, INIT_VARIABLE, AgentOptions, AgentSetup
from moat.agents.sessions import claude_project_dir, session_between
from moat.cli.agentinputs import choose_grant, resume_session
from moat.config.features import unsupported
from moat.config.load import parse_config
from moat.credentials.credential import Credential
from moat.credentials.store import CredentialStore
from moat.errors import ConfigError, UsageError
from moat.plan import dockerfile
from moat.plan.build import image_tag
from moat.plan.buildca import VARIABLE, build_ca
from moat.plan.identity import Identity
from tests.unit.support import CATALOG, parse, plan_for

KEY = "moat-proxy-injected"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def setup(agent: str, config: str = "", grant: str | None = None, env: dict[str, str] | None = None,
          **options: object) -> AgentSetup:
    return AGENTS[agent].setup(AgentOptions(**options), parse(config).model, grant, env or {})  # type: ignore[arg-type]


# -- each agent ------------------------------------------------------------------------------------

def test_claude_skips_permissions_answers_onboarding_and_approves_only_its_placeholder() -> None:
    s = setup("claude", grant="anthropic", env={"ANTHROPIC_API_KEY": KEY}, prompt="fix the tests")
    assert s.command == ("claude", "--dangerously-skip-permissions", "-p", "--", "fix the tests")
    assert not s.interactive
    state = json.loads(s.home_files[".claude.json"])
    assert state["hasCompletedOnboarding"] is True
    assert state["projects"]["/workspace"]["hasTrustDialogAccepted"] is True
    assert state["customApiKeyResponses"] == {"approved": [KEY[-20:]], "rejected": []}
    settings = json.loads(s.home_files[".claude/settings.json"])
    assert settings["permissions"]["defaultMode"] == "bypassPermissions"
    assert s.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and s.env["DISABLE_AUTOUPDATER"] == "1"


def test_claude_noyolo_asks_and_an_oauth_grant_approves_no_key() -> None:
    s = setup("claude", grant="claude", env={"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-x"}, yolo=False,
              initial="hello there")
    assert s.command == ("claude", "--", "hello there") and s.interactive
    assert json.loads(s.home_files[".claude/settings.json"]) == {}
    assert "customApiKeyResponses" not in json.loads(s.home_files[".claude.json"])


def test_claude_takes_its_block_env_and_local_mcp_servers() -> None:
    s = setup("claude", "claude:\n  env: {MAX_THINKING_TOKENS: '1024'}\n  mcp:\n    files:\n      command: npx\n"
                        "      args: [-y, server-files, /workspace]\n      env: {LOG: debug}\n")
    assert s.env["MAX_THINKING_TOKENS"] == "1024"
    server = json.loads(s.home_files[".claude.json"])["mcpServers"]["files"]
    assert server == {"type": "stdio", "command": "npx", "args": ["-y", "server-files", "/workspace"],
                      "env": {"LOG": "debug"}}


def test_a_local_mcp_server_with_a_grant_is_refused_not_ignored() -> None:
    with pytest.raises(UsageError, match=r"claude\.mcp\.files\.grant"):
        setup("claude", "claude:\n  mcp:\n    files: {command: x, grant: github}\n")


def test_codex_runs_exec_with_its_config_as_toml_and_the_placeholder_key() -> None:
    s = setup("codex", "codex:\n  mcp:\n    q:\n      command: 'say \"hi\"'\n      args: ['a\\\\b', 'é']\n"
                       "      env: {K: 'v\"'}\n", grant="openai", env={"OPENAI_API_KEY": "sk-moat-placeholder"},
              prompt="go")
    assert s.command == ("codex", "exec", "--skip-git-repo-check", "--", "go")
    config = tomllib.loads(s.home_files[".codex/config.toml"])
    assert config["approval_policy"] == "never" and config["sandbox_mode"] == "danger-full-access"
    assert config["projects"]["/workspace"] == {"trust_level": "trusted"}
    assert config["check_for_update_on_startup"] is False and config["analytics"] == {"enabled": False}
    assert config["mcp_servers"]["q"] == {"command": 'say "hi"', "args": ["a\\\\b", "é"], "env": {"K": 'v"'}}
    assert json.loads(s.home_files[".codex/auth.json"]) == {"OPENAI_API_KEY": "sk-moat-placeholder"}


def test_codex_noyolo_asks_without_a_sandbox_that_cannot_start_in_the_container() -> None:
    config = tomllib.loads(setup("codex", yolo=False).home_files[".codex/config.toml"])
    assert (config["approval_policy"], config["sandbox_mode"]) == ("untrusted", "danger-full-access")
    assert setup("codex", initial="hi").command == ("codex", "--", "hi")


def test_codex_toml_holds_any_text_a_moat_yaml_can() -> None:
    awkward = 'a"b\\c\u007fd\u0001é😀\n'
    s = setup("codex", "codex:\n  mcp:\n    q:\n      command: x\n", )
    toml = s.home_files[".codex/config.toml"].replace('command = "x"', f"command = {toml_string(awkward)}")
    assert tomllib.loads(toml)["mcp_servers"]["q"]["command"] == awkward


def test_gemini_uses_its_api_key_mode_and_reports_nothing() -> None:
    s = setup("gemini", prompt="go")
    assert s.command == ("gemini", "--yolo", "--prompt=go")
    settings = json.loads(s.home_files[".gemini/settings.json"])
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert s.env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    assert setup("gemini", yolo=False, initial="-hi").command == ("gemini", "--prompt-interactive=-hi")


def test_copilot_flags_win_over_the_block_and_its_token_is_the_github_placeholder() -> None:
    s = setup("copilot", "copilot: {model: gpt-a, context: long_context, experimental: true}\n",
              env={"GH_TOKEN": "ghp_placeholder"}, prompt="go", flags={"model": "gpt-b", "autopilot": True})
    assert s.command == ("copilot", "--no-auto-update", "--model", "gpt-b", "--context", "long_context",
                         "--experimental", "--autopilot", "--allow-all", "--prompt=go")
    token = s.env["COPILOT_GITHUB_TOKEN"]
    assert token.startswith("github_pat_11MOAT") and len(token) == 93 and s.env["COPILOT_AUTO_UPDATE"] == "false"


def test_pi_follows_its_grant_and_refuses_a_backend_it_has_no_credential_for() -> None:
    s = setup("pi", grant="openai", prompt="go")
    assert s.command == ("pi", "--append-system-prompt", CONTEXT_ARGUMENT, "-p", "--", "go")
    s = setup("pi", "pi: {model: gpt-x}\n", grant="openai", initial="hi")
    assert s.command == ("pi", "--provider", "openai", "--model", "gpt-x", "--append-system-prompt", CONTEXT_ARGUMENT,
                         "--", "hi")
    with pytest.raises(UsageError, match="set to use anthropic, but the run's credential is openai"):
        setup("pi", "pi: {provider: anthropic}\n", grant="openai")
    with pytest.raises(UsageError, match="must be one of anthropic, openai"):
        setup("pi", "pi: {provider: mistral}\n", grant=None)
    assert AGENTS["pi"].preferred_grants(AgentOptions(flags={"provider": "openai"}), parse("").model) == ("openai",)


# -- how a run takes them -------------------------------------------------------------------------

def test_the_agents_dependencies_join_moat_yaml_whose_versions_win_and_meet_its_requirements() -> None:
    claude = AGENTS["claude"]
    implied = (*claude.extra_dependencies, claude.dependency)
    config = parse_config("dependencies: [node@20, jq]\n", CATALOG, implied=implied)
    assert [d.spec for d in config.dependencies] == ["node@20", "jq", "git", "claude-code"]
    # What the agent brings counts: gh needs git, typescript node, both added by moat claude.
    assert [d.name for d in parse_config("dependencies: [gh, typescript]\n", CATALOG, implied=implied)
            .dependencies] == ["gh", "typescript", "node", "git", "claude-code"]
    # ...also when another key is wrong: that one is the only problem said.
    with pytest.raises(ConfigError) as raised:
        parse_config("dependencies: [typescript]\nnetwork: {policy: bogus}\n", CATALOG, implied=implied)
    assert [p.dotted for p in raised.value.problems] == ["network.policy"]
    assert claude_project_dir(Path(os.fsdecode(b"/w/bad\xff")), Path("/m")).name.startswith("w-bad-")


def test_the_plan_wraps_the_agent_to_copy_its_files_and_mounts_them_read_only() -> None:
    agent = setup("pi", grant="anthropic", prompt="go")
    plan = plan_for("env: {PI_OFFLINE: '0'}\n", command=(), agent=agent)
    # The context file's argument: where this runtime mounts it.
    assert plan.command == ("pi", "--append-system-prompt", "/etc/moat/moat-context.md", "-p", "--", "go")
    container = plan.agent.command  # held until its turn: the hold wrapper, then the init wrapper
    start = container.index("/bin/sh")
    assert container[start:start + 4] == ("/bin/sh", "-c", 'cp -R "$MOAT_AGENT_INIT"/. "$HOME"/ && exec "$@"',
                                          "moat-agent-init")
    assert container[start + 4:] == plan.command
    assert plan.agent.env[INIT_VARIABLE] == "/etc/moat/agent-init"
    assert plan.agent.env["PI_OFFLINE"] == "0"  # moat.yaml's env wins over the agent's
    [mount] = [m for m in plan.agent.mounts if m.target == "/etc/moat/agent-init/.pi/agent/settings.json"]
    assert mount.read_only and Path(mount.source).parent.name == "agent-init"
    assert dict(plan.agent.files)[mount.source] == agent.home_files[".pi/agent/settings.json"]
    assert not plan.interactive  # -p


def test_the_sandbox_stages_under_its_private_tmp() -> None:
    plan = plan_for("", command=(), agent=setup("codex", prompt="go"), runtime="sandbox")
    assert plan.agent.env[INIT_VARIABLE] == "/tmp/moat-grants/agent-init"
    assert any(m.target == "/tmp/moat-grants/agent-init/.codex/config.toml" for m in plan.agent.mounts)


def test_the_agents_grant_is_one_the_run_names_else_the_first_stored(tmp_path: Path) -> None:
    config = parse("")
    claude = AGENTS["claude"]
    with pytest.raises(UsageError, match=r"needs a credential and none is stored \(claude or anthropic\)") as raised:
        choose_grant(claude, AgentOptions(), config, [], tmp_path, None)
    assert "moat grant anthropic" in (raised.value.hint or "")
    store = CredentialStore(tmp_path)
    store.save(Credential(provider="anthropic", token="sk-ant-api03-x"))
    assert choose_grant(claude, AgentOptions(), config, [], tmp_path, None) == ("anthropic", False)
    store.save(Credential(provider="claude", token="sk-ant-oat01-x"))
    assert choose_grant(claude, AgentOptions(), config, [], tmp_path, None) == ("claude", False)
    assert choose_grant(claude, AgentOptions(), config, ["anthropic:x"], tmp_path, None) == ("anthropic", True)
    # an alias names its provider (codex is openai's)
    assert choose_grant(AGENTS["codex"], AgentOptions(), config, ["codex"], tmp_path, None) == ("openai", True)


def test_agent_blocks_load_and_only_what_is_not_built_is_refused() -> None:
    assert unsupported(parse("claude:\n  mcp:\n    x: {command: y}\ncodex: {mcp: {}}\ncopilot: {model: m}\n")) == []
    found = [".".join(p) for p, _ in unsupported(parse(
        "claude:\n  plugins: {a@b: true}\n  base_url: https://gw.example.test\n  sync_logs: true\n"
        "codex: {shared_sessions: true}\npi: {packages: ['npm:x']}\n"))]
    assert found == ["codex.shared_sessions", "pi.packages"]  # plugins and base_url are built


# -- the build's certificate authorities ------------------------------------------------------------

def test_the_build_ca_comes_from_a_file_or_a_directory_of_certificates(tmp_path: Path) -> None:
    assert build_ca({}) is None and build_ca({VARIABLE: " "}) is None
    (tmp_path / "a.crt").write_text(PEM)
    (tmp_path / "b.pem").write_text(PEM.replace("fake", "other"))
    (tmp_path / "notes.txt").write_text("ignored")
    assert build_ca({VARIABLE: str(tmp_path)}) == PEM + PEM.replace("fake", "other")
    assert build_ca({VARIABLE: str(tmp_path / "a.crt")}) == PEM


def test_only_certificates_are_taken_never_a_private_key(tmp_path: Path) -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIIEsecret\n-----END PRIVATE KEY-----\n"
    (tmp_path / "mitmproxy-ca.pem").write_text(key + PEM)
    (tmp_path / "dhparam.pem").write_text("-----BEGIN DH PARAMETERS-----\nMIIB\n-----END DH PARAMETERS-----\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "CORP.CRT").write_text(PEM.replace("fake", "corp"))
    found = build_ca({VARIABLE: str(tmp_path)})
    assert found == PEM + PEM.replace("fake", "corp")  # below the directory, any case; the key left out
    assert "PRIVATE" not in (build_ca({VARIABLE: str(tmp_path / "mitmproxy-ca.pem")}) or "PRIVATE")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), ("not a certificate\n", "holds no PEM certificate"), ("", "holds no PEM"),
])
def test_a_wrong_build_ca_is_a_usage_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        build_ca({VARIABLE: str(path)})


def test_a_build_ca_directory_without_certificates_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"holds no PEM certificate in a \*.crt or \*.pem"):
        build_ca({VARIABLE: str(tmp_path)})


def test_the_build_trusts_the_ca_before_any_download_and_the_tag_follows_its_content() -> None:
    deps = tuple(parse("dependencies: [node, typescript]\n").dependencies)
    text = dockerfile.render(dockerfile.ImageInputs("node:22-slim", deps, 1000, 1000, build_ca=PEM), CATALOG)
    lines = text.splitlines()
    ca_file = dockerfile.BUILD_CA_FILE
    copy = lines.index(f"COPY {ca_file} /usr/local/share/ca-certificates/{ca_file}")
    npm = next(i for i, line in enumerate(lines) if "npm install" in line)
    assert next(i for i, line in enumerate(lines) if "apt-get install" in line) < copy < npm
    assert lines[npm].startswith("RUN export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt PIP_CERT=")
    assert not any(line.startswith("ENV") and "CA_CERTS" in line for line in lines)  # the run's environment is moat's
    context = {dockerfile.BUILD_CA_FILE: PEM}
    assert image_tag(["x"], text, context) != image_tag(["x"], text, {dockerfile.BUILD_CA_FILE: PEM + PEM})
    plan = plan_for("dependencies: [node, typescript]\n", host_env={VARIABLE: "/nonexistent/ca.pem"}, runtime="sandbox")
    assert plan.image.context == {}  # the sandbox builds nothing: the variable is not even read


def test_claude_code_brings_node_as_the_go_tools_needs_none_declared() -> None:
    assert [d.spec for d in parse("dependencies: [claude-code, git]\n").dependencies] == ["claude-code", "git",
                                                                                           "node@22"]
    assert [d.spec for d in parse("dependencies: [node@20, claude-code]\n").dependencies] == ["node@20",
                                                                                               "claude-code"]
    plan = plan_for("dependencies: [claude-code]\n")
    assert plan.image.base_image == "node:22-slim"


@pytest.mark.parametrize("where", ["env", "cli", "claude.env"])
def test_an_agent_run_keeps_its_home(where: str) -> None:
    text = {"env": "env: {HOME: /workspace}\n", "claude.env": "claude:\n  env: {HOME: /workspace}\n"}.get(where, "")
    cli = ("HOME=/workspace",) if where == "cli" else ()
    with pytest.raises((UsageError, ConfigError), match="HOME is where an agent command puts"):
        plan_for(text, command=(), agent=setup("claude", text), env=cli)
    plan_for(text, env=cli)  # moat run: HOME is the user's to set


def test_with_both_grants_claude_uses_the_subscription_and_its_shell_commands_the_api_key() -> None:
    env = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-placeholder", "ANTHROPIC_API_KEY": KEY}
    s = setup("claude", grant="claude", env=env, prompt="go")
    assert s.command[:4] == ("env", "-u", "ANTHROPIC_API_KEY", "claude")
    assert s.home_files[".claude/anthropic-env.sh"] == f"export ANTHROPIC_API_KEY={KEY}\n"
    assert s.env["BASH_ENV"] == "$HOME/.claude/anthropic-env.sh"
    assert "customApiKeyResponses" not in json.loads(s.home_files[".claude.json"])
    only_key = setup("claude", grant="anthropic", env={"ANTHROPIC_API_KEY": KEY})
    assert only_key.command[0] == "claude" and "BASH_ENV" not in only_key.env


# -- sessions kept on the host ---------------------------------------------------------------------

def test_claude_keeps_each_workspaces_sessions_under_moat_home(tmp_path: Path) -> None:
    claude = AGENTS["claude"]
    [(host, relative)] = claude.state(parse("").model, Path("/home/a/my.project"), tmp_path)
    assert host == str(claude_project_dir(Path("/home/a/my.project"), tmp_path))
    assert Path(host).parent == tmp_path / "sessions" / "claude" and Path(host).name.startswith("home-a-my-project-")
    assert relative == ".claude/projects/-workspace"
    long = claude_project_dir(Path("/w/" + "x" * 400), tmp_path)  # any length: a name the filesystem takes
    assert len(long.name) <= 93 and long != claude_project_dir(Path("/w/" + "x" * 401), tmp_path)
    assert claude.state(parse("claude: {sync_logs: false}\n").model, Path("/w"), tmp_path) == ()
    # Codex's and Gemini CLI's whole session directories are the workspace's own, each under its agent.
    for name, target in (("codex", ".codex/sessions"), ("gemini", ".gemini/tmp")):
        [(kept, where)] = AGENTS[name].state(parse("").model, Path("/home/a/my.project"), tmp_path)
        assert Path(kept).parent == tmp_path / "sessions" / name and where == target
        assert AGENTS[name].state(parse(f"{name}: {{sync_logs: false}}\n").model, Path("/w"), tmp_path) == ()
    agent = replace(setup("claude", prompt="go"), state_mounts=((host, relative),))
    plan = plan_for("", command=(), agent=agent, identity=Identity(1000, 1000))
    [mount] = [m for m in plan.agent.mounts if m.source == host]
    assert mount.target == "/etc/moat/agent-state/0" and not mount.read_only and mount.create
    assert mount.owner == (1000, 1000)  # created as root, it is the agent's to write in
    script = plan.agent.command[plan.agent.command.index("/bin/sh") + 2]
    # Linked into place: a mount at its place would leave ~/.claude root's (created by the engine).
    assert script == ('mkdir -p "$HOME"/.claude/projects && ln -sfn /etc/moat/agent-state/0'
                      ' "$HOME"/.claude/projects/-workspace && cp -R "$MOAT_AGENT_INIT"/. "$HOME"/ && exec "$@"')


def test_claude_continues_and_resumes_sessions() -> None:
    assert setup("claude", continue_session=True).command == ("claude", "--dangerously-skip-permissions", "--continue")
    session = "3f2b8c1e-0d4a-4e57-9a61-2c7d5e8f9b10"
    assert setup("claude", resume=session, prompt="more").command == (
        "claude", "--dangerously-skip-permissions", "--resume", session, "-p", "--", "more")


def test_the_session_a_run_wrote_is_found_by_its_time(tmp_path: Path) -> None:
    ids = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
           "33333333-3333-4333-8333-333333333333"]
    for session, when in zip(ids, (1000, 2000, 3000), strict=True):
        path = tmp_path / f"{session}.jsonl"
        path.write_text("{}\n")
        os.utime(path, (when, when))
    (tmp_path / "notes.jsonl").write_text("")
    start = datetime.fromtimestamp(1500, UTC)
    assert session_between(tmp_path, start, datetime.fromtimestamp(2500, UTC)) == ids[1]
    assert session_between(tmp_path, start, None) == ids[2]
    assert session_between(tmp_path, datetime.fromtimestamp(5000, UTC), None) is None
    assert session_between(tmp_path / "missing", start, None) is None


def _recorded_run(home: Path, run_id: str, workspace: Path, **meta: object) -> None:
    directory = home / "runs" / run_id
    directory.mkdir(parents=True)
    record = {"id": run_id, "name": "earlier", "state": "exited", "workspace": str(workspace),
              "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z",
              "ended_at": "2026-01-01T00:10:00Z", "agent_cli": "claude", **meta}
    (directory / "metadata.json").write_text(json.dumps(record))


def test_resume_takes_a_session_id_or_the_session_a_run_of_this_workspace_wrote(tmp_path: Path) -> None:
    home, workspace = tmp_path / "moat", tmp_path / "ws"
    session = "3f2b8c1e-0d4a-4e57-9a61-2c7d5e8f9b10"
    assert resume_session(session.upper(), workspace, home) == session
    _recorded_run(home, "run_aaaaaaaaaaaa", workspace)
    with pytest.raises(UsageError, match="no Claude Code session of run run_aaaaaaaaaaaa"):
        resume_session("earlier", workspace, home)
    transcript = claude_project_dir(workspace, home) / f"{session}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("{}\n")
    when = datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp()
    os.utime(transcript, (when, when))
    assert resume_session("earlier", workspace, home) == session
    with pytest.raises(UsageError, match=r"worked on .*, not"):
        resume_session("earlier", tmp_path / "elsewhere", home)
    _recorded_run(home, "run_bbbbbbbbbbbb", workspace, name="shell", agent_cli=None)
    with pytest.raises(UsageError, match="did not run Claude Code"):
        resume_session("shell", workspace, home)
    with pytest.raises(UsageError, match="no run 'nothing'"):
        resume_session("nothing", workspace, home)
    _recorded_run(home, "run_cccccccccccc", workspace, name="cut-short", ended_at=None, state="running", pid=1)
    with pytest.raises(UsageError, match="has no end on record"):
        resume_session("cut-short", workspace, home)
    # Once cleaned up, its end on record is when it was found: still no end to go by.
    _recorded_run(home, "run_dddddddddddd", workspace, name="settled", state="failed", ended_unknown=True)
    with pytest.raises(UsageError, match="has no end on record"):
        resume_session("settled", workspace, home)


def test_exec_and_join_refuse_what_they_cannot_enter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from moat.cli.main import main

    monkeypatch.setenv("MOAT_HOME", str(tmp_path))
    _recorded_run(tmp_path, "run_aaaaaaaaaaaa", tmp_path / "ws")
    assert main(["exec", "earlier"]) == 2
    assert "needs a command after '--'" in capsys.readouterr().err
    assert main(["exec", "earlier", "--", "true"]) == 2
    assert "is exited, not running: there is nothing to enter" in capsys.readouterr().err
    assert main(["join", "earlier", "-p", "x"]) == 2
    assert "not running" in capsys.readouterr().err
    assert main(["join", "nothing"]) == 2
    assert "no run 'nothing'" in capsys.readouterr().err


def test_join_starts_the_agent_as_the_run_did() -> None:
    from moat.cli.enter import join_command

    gemini = {"agent_cli": "gemini", "agent_settings": {"yolo": False, "flags": {}}, "grants": ["gemini"]}
    assert join_command(gemini, {}, "more", False) == ("gemini", "--prompt=more")  # no --yolo
    # The moat.yaml block the run was built from is kept with it (the file may have changed since).
    copilot_setup = setup("copilot", "copilot: {context: long_context, reasoning_effort: high}\n", prompt="x",
                          flags={"model": "gpt-b"})
    copilot = {"agent_cli": "copilot", "agent_settings": dict(copilot_setup.settings), "grants": ["github"]}
    assert join_command(copilot, {"GH_TOKEN": "x"}, "q", False) == (
        "copilot", "--no-auto-update", "--model", "gpt-b", "--context", "long_context", "--reasoning-effort", "high",
        "--allow-all", "--prompt=q")
    pi = {"agent_cli": "pi", "agent_settings": {"yolo": True, "flags": {"provider": "openai", "model": "m"}},
          "grants": ["anthropic", "openai"]}
    assert join_command(pi, {"MOAT_CONTEXT": "/etc/moat/moat-context.md"}, "q", False) == (
        "pi", "--provider", "openai", "--model", "m", "--append-system-prompt", "/etc/moat/moat-context.md",
        "-p", "--", "q")
    claude = {"agent_cli": "claude", "grants": ["claude", "anthropic"]}  # a record from before settings were kept
    assert join_command(claude, {"ANTHROPIC_API_KEY": KEY}, None, True) == (
        "env", "-u", "ANTHROPIC_API_KEY", "claude", "--dangerously-skip-permissions", "--continue")
    # A damaged record: the safe reading (no yolo unless it says so), never a crash.
    odd = {"agent_cli": "gemini", "agent_settings": {"yolo": "yes", "flags": ["x"], "block": {"nope": 1}},
           "grants": "gemini"}
    assert join_command(odd, {}, "q", False) == ("gemini", "--prompt=q")
    # What is kept with the run never holds the agent's environment (moat.yaml's claude.env may be a secret).
    assert "s3cret" not in json.dumps(setup("claude", "claude:\n  env: {TOKEN: s3cret}\n").settings)
