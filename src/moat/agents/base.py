"""The shape every agent integration shares, and the helpers they use."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moat.agents.model import AgentOptions, AgentSetup
from moat.agents.sessions import sessions_dir
from moat.config.schema import LocalMcpServer, MoatConfig
from moat.errors import UsageError


@dataclass(frozen=True)
class Agent(ABC):
    """One agent CLI: how moat installs it, which credentials it can use, and how it is set up."""

    name: str  # the command: moat claude
    title: str  # Claude Code
    dependency: str  # the catalog's entry that installs it
    grants: tuple[str, ...]  # providers it can use, preferred first
    grant_hint: str  # what to run when none is stored
    # Needed beside it (git for the agents' own use of the workspace; node installs npm tools): with
    # ``dependency``, added to moat.yaml's, where it names none of them (its versions win).
    extra_dependencies: tuple[str, ...] = ("node@22", "git")
    resumable: bool = False  # -c/-r: its sessions are kept on the host (see ``state``)
    # Where under $HOME the agent keeps the sessions moat keeps on the host (None: it keeps none);
    # its moat.yaml block's sync_logs: false keeps them in the container.
    sessions_at: str | None = None

    def preferred_grants(self, options: AgentOptions, config: MoatConfig) -> tuple[str, ...]:
        """The providers to look for, in order (pi's follow the backend it is told to use)."""
        return self.grants

    def state(self, config: MoatConfig, workspace: Path, moat_home: Path) -> tuple[tuple[str, str], ...]:
        """Host directories the agent keeps its sessions in (under MOAT_HOME): (host path, path under
        the agent's $HOME)."""
        if self.sessions_at is None or getattr(getattr(config, self.name), "sync_logs", None) is False:
            return ()
        return ((str(sessions_dir(self.name, workspace, moat_home)), self.sessions_at),)

    @abstractmethod
    def setup(self, options: AgentOptions, config: MoatConfig, grant: str | None,
              grant_env: Mapping[str, str]) -> AgentSetup:
        """The run's additions for this agent; ``grant_env`` holds the grant's placeholder variables."""

    def base(self, grant: str | None, command: tuple[str, ...], options: AgentOptions,
             block: Mapping[str, object] | None = None, **kw: Any) -> AgentSetup:
        """``block``: the moat.yaml settings its command line was built from (no secret among them),
        kept with the run so that ``moat join`` builds the same one whatever the file says by then."""
        settings = {"yolo": options.yolo, "flags": dict(options.flags), "block": dict(block or {})}
        return AgentSetup(self.name, grant, command, interactive=options.prompt is None, settings=settings, **kw)


def prompt_options(options: AgentOptions, interactive: str) -> list[str]:
    """``--prompt=PROMPT``, or ``--<interactive>=MESSAGE`` for a first message: one argument each, so
    that words starting with '-' are not taken for an option (for CLIs that read no '--')."""
    if options.prompt is not None:
        return [f"--prompt={options.prompt}"]
    return [f"--{interactive}={options.initial}"] if options.initial else []


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def stdio_servers(servers: Mapping[str, LocalMcpServer], agent: str) -> dict[str, dict[str, Any]]:
    """moat.yaml's local MCP servers (started by the agent inside the container), in the shape the
    agents' JSON configuration takes."""
    out: dict[str, dict[str, Any]] = {}
    for name, server in servers.items():
        if server.grant:
            raise UsageError(f"{agent}.mcp.{name}.grant: giving a local MCP server a grant is not supported yet",
                             hint=f"Remove grant from {agent}.mcp.{name} (the server can still use the run's"
                                  " grants through the proxy like any other program).")
        entry: dict[str, Any] = {"type": "stdio", "command": server.command, "args": list(server.args)}
        if server.env:
            entry["env"] = dict(server.env)
        if server.cwd:
            entry["cwd"] = server.cwd
        out[name] = entry
    return out


def toml_string(value: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's for what JSON escapes; TOML also forbids DEL raw
    (and JSON's surrogate-pair escapes are not TOML: non-ASCII stays as it is)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
