"""GitHub Copilot CLI (``moat copilot``): the github grant's token, as the Go tool passes it."""

from __future__ import annotations

from collections.abc import Mapping

from moat.agents.base import Agent, pretty_json
from moat.agents.model import AgentOptions, AgentSetup
from moat.config.schema import MoatConfig
from moat.constants import WORKSPACE_MOUNT

GITHUB_TOKEN_VARIABLE = "GH_TOKEN"  # noqa: S105 — a variable's name


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
        if options.prompt is not None:
            command += ["-p", options.prompt]
        elif options.initial:
            command += ["-i", options.initial]
        env = {"COPILOT_AUTO_UPDATE": "false"}
        token = grant_env.get(GITHUB_TOKEN_VARIABLE)
        if token:  # Copilot reads its own variable first; the proxy puts the real token on GitHub's hosts
            env["COPILOT_GITHUB_TOKEN"] = token
        return self.base(grant, tuple(command), options, env=env,
                         home_files={".copilot/config.json": pretty_json({"trustedFolders": [WORKSPACE_MOUNT]})})


COPILOT = Copilot("copilot", "GitHub Copilot CLI", "copilot-cli", ("github",), "`moat grant github` (a token)")
