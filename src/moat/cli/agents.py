"""``moat claude``, ``moat codex``, ``moat gemini``, ``moat copilot``, ``moat pi``: an agent CLI run in
moat's container against the workspace, with everything ``moat run`` gives it (services, grants, the
network policy), its credential injected by the proxy and its configuration staged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from moat.agents import AGENTS
from moat.agents.base import Agent
from moat.agents.model import AgentOptions
from moat.cli.run import COMMAND_META, RunCommand, common_options, start_run
from moat.errors import UsageError

PI_PROVIDERS = ("anthropic", "openai")
COPILOT_CONTEXTS = ("default", "long_context")
COPILOT_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def _agent_command(agent: Agent) -> click.Command:
    def command(ctx: click.Context, path: Path, prompt: str | None, noyolo: bool = False,
                continue_session: bool = False, resume: str | None = None, **options: Any) -> int:
        words = ctx.meta.get(COMMAND_META, ())
        if continue_session and resume:
            raise UsageError("-c and -r do not go together: -c continues the latest session, -r resumes one")
        if prompt is not None and not prompt.strip():
            raise UsageError("-p needs a prompt")
        if prompt is not None and words:
            raise UsageError("-p and a first message after '--' do not go together: -p runs one prompt and exits",
                             hint="Put all of the prompt in -p, or leave -p out for an interactive session.")
        flags = {key: options.pop(key) for key in ("model", "provider", "context", "reasoning_effort",
                                                   "experimental", "autopilot") if key in options}
        if options.get("detach") and prompt is None:
            raise UsageError(f"-d needs -p: an interactive {agent.title} needs your terminal")
        if resume is not None:
            from moat.cli.agentinputs import resume_session
            from moat.run.store import moat_home

            workspace = path.expanduser().resolve()
            resume = resume_session(resume, workspace, moat_home())
        request = AgentOptions(prompt=prompt, initial=" ".join(words) or None, yolo=not noyolo,
                               continue_session=continue_session, resume=resume,
                               flags={k: v for k, v in flags.items() if v})
        from moat.cli.agentinputs import AgentRequest

        return start_run(path, (), None, agent=AgentRequest(agent, request), **options)

    command.__doc__ = (
        f"Run {agent.title} in an isolated container against the workspace PATH (default: .).\n\n"
        f"Its credential ({' or '.join(agent.grants)}) is injected by moat's proxy; the agent sees a"
        " placeholder. Everything after '--' is the first message of an interactive session.")
    params: list[Any] = [
        click.argument("path", required=False, default=".", type=click.Path(file_okay=False, path_type=Path)),
        click.option("-p", "--prompt", help="Run the agent once on PROMPT, without a terminal, and exit."),
    ]
    if agent.name != "pi":  # pi has no permission prompts to skip
        params.append(click.option("--noyolo", is_flag=True,
                                   help="Let the agent ask before it acts (by default it does not: the container"
                                        " is the boundary)."))
    if agent.resumable:
        params += [
            click.option("-c", "--continue", "continue_session", is_flag=True,
                         help="Continue the most recent session of this workspace."),
            click.option("-r", "--resume", metavar="RUN|SESSION",
                         help="Resume a session: its id, or a run (id or name) whose session moat recorded."),
        ]
    if agent.name == "copilot":
        params += [
            click.option("--model", help="The model (default: copilot.model in moat.yaml)."),
            click.option("--context", type=click.Choice(COPILOT_CONTEXTS), help="The context window size."),
            click.option("--reasoning-effort", "reasoning_effort", type=click.Choice(COPILOT_EFFORTS)),
            click.option("--experimental", is_flag=True, help="Turn on Copilot's experimental features."),
            click.option("--autopilot", is_flag=True, help="Let Copilot work through its plan without stopping."),
        ]
    if agent.name == "pi":
        params += [
            click.option("--provider", type=click.Choice(PI_PROVIDERS),
                         help="pi's backend (default: pi.provider, else the one whose credential is stored)."),
            click.option("--model", help="The model (default: pi.model in moat.yaml)."),
        ]
    decorated: Any = click.pass_context(command)
    decorated = common_options(decorated)
    for param in reversed(params):
        decorated = param(decorated)
    return click.command(agent.name, cls=RunCommand)(decorated)


claude = _agent_command(AGENTS["claude"])
codex = _agent_command(AGENTS["codex"])
gemini = _agent_command(AGENTS["gemini"])
copilot = _agent_command(AGENTS["copilot"])
pi = _agent_command(AGENTS["pi"])
