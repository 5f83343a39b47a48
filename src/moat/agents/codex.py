"""OpenAI Codex (``moat codex``): its config.toml as the Go tool writes it, with the key a placeholder."""

from __future__ import annotations

from collections.abc import Mapping

from moat.agents.base import Agent, pretty_json, stdio_servers, toml_string
from moat.agents.model import AgentOptions, AgentSetup
from moat.agents.sessions import CODEX_SESSIONS
from moat.config.schema import MoatConfig
from moat.constants import WORKSPACE_MOUNT

API_KEY_VARIABLE = "OPENAI_API_KEY"


def config_toml(yolo: bool, servers: Mapping[str, Mapping[str, object]]) -> str:
    # Inside moat's container Codex's own sandbox (bubblewrap) cannot start (no user namespaces without
    # capabilities), and the container is the boundary: --noyolo gives back Codex's approvals instead.
    approval = "never" if yolo else "untrusted"
    sandbox = "danger-full-access"
    lines = [
        "# Moat-generated: copied into the agent's home when it starts.",
        f"approval_policy = {toml_string(approval)}",
        f"sandbox_mode = {toml_string(sandbox)}",
        "check_for_update_on_startup = false",
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[shell_environment_policy]",
        'inherit = "all"',
        "",
        f"[projects.{toml_string(WORKSPACE_MOUNT)}]",
        'trust_level = "trusted"',
    ]
    for name, server in servers.items():
        lines += ["", f"[mcp_servers.{toml_string(name)}]", f"command = {toml_string(str(server['command']))}"]
        args = server.get("args") or []
        assert isinstance(args, list)
        lines.append("args = [" + ", ".join(toml_string(str(a)) for a in args) + "]")
        if server.get("cwd"):
            lines.append(f"cwd = {toml_string(str(server['cwd']))}")
        env = server.get("env") or {}
        assert isinstance(env, dict)
        if env:
            lines.append("env = { " + ", ".join(f"{toml_string(k)} = {toml_string(str(v))}"
                                                for k, v in env.items()) + " }")
    return "\n".join(lines) + "\n"


class Codex(Agent):
    def setup(self, options: AgentOptions, config: MoatConfig, grant: str | None,
              grant_env: Mapping[str, str]) -> AgentSetup:
        if options.prompt is not None:
            # A workspace need not be a git repository; moat's container is what confines Codex.
            command: tuple[str, ...] = ("codex", "exec", "--skip-git-repo-check", "--", options.prompt)
        else:  # after '--': a message that starts with '-' is not an option
            command = ("codex", *(("--", options.initial) if options.initial else ()))
        files = {".codex/config.toml": config_toml(options.yolo, stdio_servers(config.codex.mcp, "codex"))}
        key = grant_env.get(API_KEY_VARIABLE)
        if key:
            files[".codex/auth.json"] = pretty_json({API_KEY_VARIABLE: key})
        return self.base(grant, command, options, home_files=files)


CODEX = Codex("codex", "OpenAI Codex", "codex-cli", ("openai",), "`moat grant openai` (an API key)",
              sessions_at=CODEX_SESSIONS)
