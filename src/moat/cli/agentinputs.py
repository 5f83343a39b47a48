"""What an agent command (``moat claude`` …) adds to a run before it is planned: the agent's
dependencies beside moat.yaml's, and the credential it uses, chosen from what the user has stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moat.agents.base import Agent
from moat.agents.model import AgentOptions
from moat.config.load import Config
from moat.errors import UsageError
from moat.plan.proxy import ResolvedGrant


@dataclass(frozen=True)
class AgentRequest:
    agent: Agent
    options: AgentOptions


def ignored_settings(config: Config, agent: Agent | None) -> list[str]:
    """What moat.yaml asks for that this command does not use, said before the run (never silently)."""
    from moat.agents import AGENTS

    model = config.model
    notes = []
    if agent is not None:
        if model.command:
            notes.append(f"moat.yaml's command ({config.where('command')}) is not used: `moat {agent.name}` runs"
                         f" {agent.title}")
        if model.agent and model.agent != agent.name and model.agent in AGENTS:
            notes.append(f"moat.yaml's agent is {model.agent} ({config.where('agent')}); this run is"
                         f" {agent.title} (`moat {agent.name}`)")
    blocks = [name for name in AGENTS if (agent is None or name != agent.name)
              and getattr(model, name).model_fields_set]
    if blocks:
        notes += [f"moat.yaml's {name} block ({config.where(name)}) is read by `moat {name}`, not by this"
                  " command" for name in blocks]
    return notes


def resume_session(value: str, workspace: Path, home: Path) -> str:
    """``moat claude -r``'s value as a Claude Code session id: an id as it is, or the session a run
    (by id, name or id prefix) of this workspace last wrote."""
    from moat.agents.sessions import SESSION_ID, claude_project_dir, session_between
    from moat.run.registry import Registry, parse_time
    from moat.run.store import RunStore

    if SESSION_ID.fullmatch(value):
        return value.lower()
    run = Registry(RunStore(home)).resolve(value)  # an unknown run: a usage error naming `moat list --all`
    meta = run.metadata
    if meta.get("agent_cli") != "claude":
        raise UsageError(f"run {run.id} ({run.name}) did not run Claude Code: there is no session of it to resume",
                         hint="Give the session's id instead (its transcript's file name).")
    if run.active:
        raise UsageError(f"run {run.id} ({run.name}) is still running; its session can be resumed once it ends",
                         hint=f"Join it instead, or stop it first (`moat stop {run.id}`).")
    if Path(str(meta.get("workspace"))) != workspace:
        raise UsageError(f"run {run.id} ({run.name}) worked on {meta.get('workspace')}, not {workspace}",
                         hint="Resume it from that workspace: `moat claude <that workspace> -r ...`.")
    started = parse_time(meta.get("started_at")) or parse_time(meta.get("created_at"))
    ended = None if meta.get("ended_unknown") else parse_time(meta.get("ended_at"))
    if started is None or ended is None:  # an orphaned run: no end to tell its session from later ones
        raise UsageError(f"run {run.id} ({run.name}) has no end on record (it was cut short), so its session"
                         " cannot be told from later ones", hint="Give the session's id instead, or use -c.")
    session = session_between(claude_project_dir(workspace, home), started, ended)
    if session is None:
        raise UsageError(f"no Claude Code session of run {run.id} ({run.name}) is kept in {home}",
                         hint="Its sessions are kept only when claude.sync_logs is not false; `moat claude -c`"
                              " continues the workspace's latest one.")
    return session


def choose_grant(agent: Agent, options: AgentOptions, config: Config, names: list[str], home: Path,
                 profile: str | None) -> tuple[str, bool]:
    """The provider whose credential the agent uses, and whether the run names it already (moat.yaml's
    grants, --grant: by name, alias or with scopes), else the first of the agent's that is stored.
    None stored is an error saying what to do."""
    from moat.credentials.providers.registry import ProviderRegistry
    from moat.credentials.store import CredentialStore

    preferred = agent.preferred_grants(options, config.model)
    providers = ProviderRegistry.load(home)
    for name in names:
        provider = providers.find(name)
        if provider is not None and provider.name in preferred:
            return provider.name, True
    stored = set(CredentialStore(home, profile).names())
    for candidate in preferred:
        if candidate in stored:
            return candidate, False
    where = f" in profile '{profile}'" if profile else ""
    raise UsageError(f"{agent.title} needs a credential and none is stored{where}"
                     f" ({' or '.join(preferred)}); nothing was started",
                     hint=f"Store one with {agent.grant_hint}, then run again. moat's proxy puts it into the"
                          " agent's requests: the agent itself only ever sees a placeholder.")


def grant_env_of(resolved: tuple[ResolvedGrant, ...]) -> Mapping[str, str]:
    """The placeholder variables of the run's grants (``ANTHROPIC_API_KEY`` → its placeholder): what
    the agent's environment will hold."""
    return {key: value for grant in resolved for key, value in grant.env.items()}
