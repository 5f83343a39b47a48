"""Google's Gemini CLI (``moat gemini``): API-key mode, usage statistics and update checks off."""

from __future__ import annotations

from collections.abc import Mapping

from moat.agents.base import Agent, pretty_json, prompt_options, stdio_servers
from moat.agents.model import AgentOptions, AgentSetup
from moat.agents.sessions import GEMINI_SESSIONS
from moat.config.schema import MoatConfig


class Gemini(Agent):
    def setup(self, options: AgentOptions, config: MoatConfig, grant: str | None,
              grant_env: Mapping[str, str]) -> AgentSetup:
        command = ["gemini"]
        if options.yolo:
            command.append("--yolo")
        command += prompt_options(options, "prompt-interactive")
        settings: dict[str, object] = {
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False},
            "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
        }
        servers = stdio_servers(config.gemini.mcp, "gemini")
        if servers:
            settings["mcpServers"] = {name: {k: v for k, v in entry.items() if k != "type"}
                                      for name, entry in servers.items()}
        # The workspace is trusted as the other agents' are: the container, not a prompt, is the boundary.
        return self.base(grant, tuple(command), options, env={"GEMINI_CLI_TRUST_WORKSPACE": "true"},
                         home_files={".gemini/settings.json": pretty_json(settings)})


GEMINI = Gemini("gemini", "Gemini CLI", "gemini-cli", ("gemini",), "`moat grant gemini` (an API key)",
                sessions_at=GEMINI_SESSIONS)
