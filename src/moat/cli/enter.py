"""``moat exec RUN -- CMD`` and ``moat join RUN [AGENT]``: into a running run's agent container, as
the agent's user, in /workspace, with this terminal (or stdin and stdout) — the exit code passed on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from moat.cli.run import COMMAND_META, RunCommand
from moat.config.schema import MoatConfig
from moat.constants import WORKSPACE_MOUNT
from moat.errors import UsageError


def _running_agent(reference: str) -> tuple[Any, Any, str, str]:
    """The run (which must be running), its runtime, its agent's container and user."""
    from moat.run.registry import Registry
    from moat.run.store import RunStore, moat_home
    from moat.runtime import select
    from moat.runtime.base import NotFound

    run = Registry(RunStore()).resolve(reference)
    meta = run.metadata
    if run.state != "running":
        raise UsageError(f"run {run.id} ({run.name}) is {run.state}, not running: there is nothing to enter",
                         hint="`moat list` shows the running ones.")
    agent = meta.get("agent") or {}
    container = agent.get("container_id") or agent.get("container_name")
    identity = meta.get("identity") or {}
    if not container or "uid" not in identity:
        raise UsageError(f"run {run.id} ({run.name}) has no agent container on record yet (is it still starting?)")
    runtime = select.for_run(meta, moat_home())
    if runtime is None:
        raise UsageError(f"run {run.id} ran on {meta.get('runtime')}, which is not available here")
    try:
        runtime.state(container)
    except NotFound:
        raise UsageError(f"run {run.id} ({run.name}): its agent container is gone") from None
    return run, runtime, str(container), f"{identity['uid']}:{identity.get('gid', identity['uid'])}"


@click.command("exec", cls=RunCommand)
@click.argument("run")
@click.pass_context
def exec_(ctx: click.Context, run: str) -> int:
    """Run a command in a running run's agent container: moat exec RUN -- CMD [ARGS…].

    It runs as the agent's user in /workspace, with the agent's environment (placeholders, never a
    credential); stdin is passed on, and a terminal when you have one. Its exit code is moat's."""
    command = tuple(ctx.meta.get(COMMAND_META, ()))
    if not command:
        raise UsageError("moat exec needs a command after '--'", hint="For example: moat exec RUN -- git status")
    _, runtime, container, user = _running_agent(run)
    return int(runtime.exec_terminal(container, command, user, WORKSPACE_MOUNT))


@click.command("join")
@click.argument("run")
@click.argument("agent", required=False)
@click.option("-p", "--prompt", help="Ask once, without a terminal, and exit.")
@click.option("-c", "--continue", "continue_session", is_flag=True,
              help="Continue the run's latest session (Claude Code).")
def join(run: str, agent: str | None, prompt: str | None, continue_session: bool) -> int:
    """Start the run's agent once more inside its running container (a second session beside the
    first, with the same files, services and grants): moat join RUN [AGENT]."""
    import sys

    from moat.agents import AGENTS
    info, runtime, container, user = _running_agent(run)
    cli = info.metadata.get("agent_cli")
    if cli not in AGENTS:
        raise UsageError(f"run {info.id} ({info.name}) runs no agent moat knows (it was started with moat run)",
                         hint="`moat exec RUN -- CMD` runs any command in it.")
    if agent is not None and agent != cli:
        raise UsageError(f"run {info.id} ({info.name}) runs {cli}, not {agent[:40]}", hint=f"moat join {run} {cli}")
    if prompt is not None and not prompt.strip():
        raise UsageError("-p needs a prompt")
    if prompt is None and not sys.stdin.isatty():
        raise UsageError("moat join needs a terminal for an interactive session", hint="Or ask once with -p PROMPT.")
    if continue_session and not AGENTS[cli].resumable:
        raise UsageError(f"-c continues Claude Code's sessions; moat join cannot continue {AGENTS[cli].title}'s",
                         hint=f"Its sessions are kept on the host: `moat join {run}` and resume one from inside"
                              f" ({'codex resume' if cli == 'codex' else 'its own resume command'}).")
    command = join_command(info.metadata, runtime.container_env(container), prompt, continue_session)
    return int(runtime.exec_terminal(container, command, user, WORKSPACE_MOUNT))


def join_command(meta: Mapping[str, Any], env: Mapping[str, str], prompt: str | None,
                 continue_session: bool) -> tuple[str, ...]:
    """The agent's command line as the run built it — its options (--noyolo, a model), the moat.yaml
    settings it was built from (kept with the run: the agent may have rewritten the file since), the
    grant it used, the placeholders its container holds — with this prompt. The run staged the
    agent's files when it started: the command is all a second session needs."""
    from pydantic import ValidationError

    from moat.agents import AGENTS
    from moat.agents.model import CONTEXT_ARGUMENT, AgentOptions
    from moat.plan.context import CONTEXT_VARIABLE

    agent = AGENTS[str(meta.get("agent_cli"))]
    settings = meta.get("agent_settings")
    settings = settings if isinstance(settings, dict) else {}
    flags = settings.get("flags")
    flags = {str(k): v for k, v in flags.items() if isinstance(v, str | bool)} if isinstance(flags, dict) else {}
    block = settings.get("block")
    try:
        config = MoatConfig.model_validate({agent.name: block}) if isinstance(block, dict) else MoatConfig()
    except ValidationError:
        config = MoatConfig()  # a record from another version: the run's options still hold
    options = AgentOptions(prompt=prompt, continue_session=continue_session, yolo=settings.get("yolo", True) is True,
                           flags=flags)
    grants = [str(g).split(":", 1)[0] for g in meta.get("grants") or [] if isinstance(g, str)]
    grant = next((g for g in agent.preferred_grants(options, config) if g in grants), None)
    setup = agent.setup(options, config, grant, env)
    return tuple(env.get(CONTEXT_VARIABLE, "") if arg == CONTEXT_ARGUMENT else arg for arg in setup.command)
