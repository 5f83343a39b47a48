"""GitHub Copilot CLI (``moat copilot``): the github grant's token, as the Go tool passes it."""

from __future__ import annotations

from collections.abc import Mapping

from moat.agents.base import Agent, pretty_json, prompt_options
from moat.agents.model import AgentOptions, AgentSetup
from moat.config.schema import MoatConfig
from moat.constants import WORKSPACE_MOUNT

GITHUB_TOKEN_VARIABLE = "GH_TOKEN"  # noqa: S105 — a variable's name
# Copilot refuses a classic token (ghp_): its placeholder has a fine-grained token's shape. The proxy
# replaces the whole Authorization header on GitHub's and Copilot's API hosts, whatever it holds.
PLACEHOLDER = "github_pat_11MOATPROXYINJECTEDPLACEHOLDER" + "0" * 52


class Copilot(Agent):
    def setup(self, options: AgentOptions, config: MoatConfig, grant: str | None,
              grant_env: Mapping[str, str]) -> AgentSetup:
        block = config.copilot
        flags = options.flags
        command = ["copilot", "--no-auto-update"]
        model = str(flags.get("model") or block.model)
        context = str(flags.get("context") or block.context)
        effort = str(flags.get("reasoning_effort") or block.reasoning_effort)
        if model:
            command += ["--model", model]
        if context:
            command += ["--context", context]
        if effort:
            command += ["--reasoning-effort", effort]
        if flags.get("experimental") or block.experimental:
            command.append("--experimental")
        if flags.get("autopilot") or block.autopilot:
            command.append("--autopilot")
        if options.yolo:
            command.append("--allow-all")
        command += prompt_options(options, "interactive")
        env = {"COPILOT_AUTO_UPDATE": "false"}
        if GITHUB_TOKEN_VARIABLE in grant_env:  # Copilot reads its own variable first
            env["COPILOT_GITHUB_TOKEN"] = PLACEHOLDER
        settings = block.model_dump(include={"model", "context", "reasoning_effort", "experimental", "autopilot"})
        return self.base(grant, tuple(command), options, block=settings, env=env,
                         home_files={".copilot/config.json": pretty_json({"trustedFolders": [WORKSPACE_MOUNT]})})


COPILOT = Copilot("copilot", "GitHub Copilot CLI", "copilot-cli", ("github",), "`moat grant github` (a token)")
