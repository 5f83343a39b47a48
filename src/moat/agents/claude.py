"""Claude Code (``moat claude``): the Go tool's staging, with the credential left to the proxy.

The container is the boundary, so permissions are skipped unless ``--noyolo``; onboarding and the
workspace's trust dialog are answered; auto-update, telemetry and error reports are off (the image
is rebuilt to update, and under a strict policy they would only be refused).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from moat.agents.base import Agent, pretty_json, stdio_servers
from moat.agents.model import AgentOptions, AgentSetup
from moat.agents.sessions import claude_mount_target
from moat.config.schema import MoatConfig
from moat.constants import WORKSPACE_MOUNT

API_KEY_VARIABLE = "ANTHROPIC_API_KEY"
ANTHROPIC_ENV_FILE = ".claude/anthropic-env.sh"
QUIET_ENV = {
    # One switch for auto-update, telemetry, error reporting and feedback.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    # Claude Code refuses to skip permissions as root unless it is told it runs in a sandbox; it does
    # (a root-owned workspace runs the agent as uid 0, without capabilities, in its container).
    "IS_SANDBOX": "1",
}


class Claude(Agent):
    def setup(self, options: AgentOptions, config: MoatConfig, grant: str | None,
              grant_env: Mapping[str, str]) -> AgentSetup:
        block = config.claude
        key = grant_env.get(API_KEY_VARIABLE)
        env = {**QUIET_ENV, **block.env}
        files: dict[str, str] = {}
        command = ["claude"]
        if grant == "claude" and key:
            # Both grants: Claude Code would take the API key over the subscription. It starts without
            # it; the shell commands it runs get it back through bash's BASH_ENV (as the Go tool does).
            command = ["env", "-u", API_KEY_VARIABLE, "claude"]
            files[ANTHROPIC_ENV_FILE] = f"export {API_KEY_VARIABLE}={shlex.quote(key)}\n"
            env["BASH_ENV"] = f"$HOME/{ANTHROPIC_ENV_FILE}"  # bash expands it
        if options.yolo:
            command.append("--dangerously-skip-permissions")
        if options.continue_session:
            command.append("--continue")
        if options.resume:
            command += ["--resume", options.resume]
        # After '--': a prompt that starts with '-' is words for the model, not an option for Claude Code.
        if options.prompt is not None:
            command += ["-p", "--", options.prompt]
        elif options.initial:
            command += ["--", options.initial]
        state: dict[str, object] = {
            "hasCompletedOnboarding": True,
            "theme": "dark",
            "projects": {WORKSPACE_MOUNT: {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}},
        }
        if grant == "anthropic" and key:  # the placeholder is the key it sees: approved up front, as a user would
            state["customApiKeyResponses"] = {"approved": [key[-20:]], "rejected": []}
        servers = stdio_servers(block.mcp, "claude")
        if servers:
            state["mcpServers"] = servers
        settings: dict[str, object] = {}
        if options.yolo:
            settings = {"permissions": {"defaultMode": "bypassPermissions"}, "skipDangerousModePermissionPrompt": True}
        if block.plugins:  # installed in the image; this file replaces the one the install wrote
            settings["enabledPlugins"] = dict(sorted(block.plugins.items()))
        files.update({".claude.json": pretty_json(state), ".claude/settings.json": pretty_json(settings)})
        return self.base(grant, tuple(command), options, env=env, home_files=files)


CLAUDE = Claude("claude", "Claude Code", "claude-code", ("claude", "anthropic"),
                "`moat grant claude` (a Claude subscription: `claude setup-token`) or `moat grant anthropic`"
                " (an API key)", resumable=True, sessions_at=claude_mount_target())
