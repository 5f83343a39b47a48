"""``moat run``: plan a run from moat.yaml and the command line, then execute it (or print it)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moat.constants import RUNTIMES
from moat.errors import UsageError

if TYPE_CHECKING:
    from moat.cli.agentinputs import AgentRequest

COMMAND_META = "moat.command"


class RunCommand(click.Command):
    """Everything after the first ``--`` is the agent's command, untouched by option parsing."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            split = args.index("--")
            ctx.meta[COMMAND_META] = tuple(args[split + 1 :])
            args = args[:split]
        return super().parse_args(ctx, args)


def common_options(function: Any) -> Any:
    """The options every command that starts a run takes (``moat run`` and the agent commands)."""
    options = [
        click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
                     help="Set a variable for the agent (repeatable); KEY alone copies it from your environment."),
        click.option("-n", "--name", help="A name for the run (default: moat.yaml's name, else a random one)."),
        click.option("--runtime", type=click.Choice(RUNTIMES),
                     help="Where to run (default: moat.yaml's runtime, $MOAT_RUNTIME, else docker when an engine "
                          "answers and the bubblewrap sandbox otherwise)."),
        click.option("-d", "--detach", is_flag=True,
                     help="Return once the agent has started; a supervisor records it and tears the run down."),
        click.option("--rebuild", is_flag=True, help="Rebuild the agent image even if it is up to date."),
        click.option("--keep", is_flag=True,
                     help="Keep the agent container after it exits (services are removed)."),
        click.option("--grant", "grants", multiple=True, metavar="PROVIDER[:SCOPES]",
                     help="Give the agent a stored credential, injected by moat's proxy (repeatable; adds to"
                          " moat.yaml's grants)."),
        click.option("--profile", envvar="MOAT_PROFILE", metavar="NAME",
                     help="The credential profile the grants come from (default: $MOAT_PROFILE; see `moat grant`)."),
        click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST",
                     help="Let the agent reach HOST (or *.example.com) in this run, as a network.rules entry would"
                          " (repeatable; matters under network.policy: strict)."),
        click.option("--worktree", "--wt", "worktree", metavar="BRANCH",
                     help="Run in a git worktree of BRANCH (made from HEAD when new) instead of PATH itself;"
                          " the run is named NAME-BRANCH (see `moat wt`)."),
        click.option("--workspace-mode", type=click.Choice(["bind", "volume"]),
                     help="bind: the agent works on the workspace itself; volume: on a copy in a volume of the"
                          " run's own, the host's tree untouched (over moat.yaml's workspace.mode)."),
        click.option("--mount", "mounts", multiple=True, metavar="SOURCE:TARGET[:ro]",
                     help="Bind a host path into the container (repeatable; SOURCE relative to the workspace; a"
                          " TARGET of /workspace replaces the workspace's mount)."),
        click.option("--dry-run", is_flag=True, help="Print the plan (secrets masked) and start nothing."),
        click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command(cls=RunCommand)
@click.argument("path", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("-i", "--interactive/--no-interactive", default=None,
              help="Attach your terminal to the agent (default: moat.yaml's interactive).")
@common_options
@click.pass_context
def run(ctx: click.Context, /, path: Path, interactive: bool | None, **options: Any) -> Any:
    """Run a command in an isolated container against the workspace PATH (default: .), with the
    services moat.yaml declares started, ready and described in MOAT_* variables.

    \b
    Examples:
      moat run -- psql "$MOAT_POSTGRES_URL" -c 'select 1'
      moat run ./project --dry-run
    """
    return start_run(path, ctx.meta.get(COMMAND_META, ()), interactive, **options)


def start_run(path: Path, command: tuple[str, ...], interactive: bool | None, *, env: tuple[str, ...],
              name: str | None, runtime: str | None, detach: bool, rebuild: bool, keep: bool,
              grants: tuple[str, ...], profile: str | None, allow_hosts: tuple[str, ...], dry_run: bool,
              as_json: bool, mounts: tuple[str, ...] = (), worktree: str | None = None,
              workspace_mode: str | None = None,
              agent: AgentRequest | None = None) -> int:
    """Plan a run and execute it (or print it): ``moat run``'s work, and the agent commands'."""
    from moat.catalog import DepType, load_catalog
    from moat.cli.agentinputs import choose_grant, grant_env_of, ignored_settings
    from moat.cli.planview import render_plan
    from moat.cli.runinputs import (
        check_configured_grants,
        docker_socket,
        grant_names,
        proxy_ca_for,
        read_llm_policy,
        resolve_grants,
        resolve_secrets,
    )
    from moat.config.features import require_supported
    from moat.config.load import load_config
    from moat.plan.build import RunRequest, build_plan
    from moat.plan.identity import agent_identity
    from moat.plan.names import new_run_id
    from moat.plan.storage import parse_cli_mount
    from moat.run.store import moat_home
    from moat.runtime import select

    workspace = path.expanduser().resolve()
    if not workspace.is_dir():
        raise UsageError(f"workspace {workspace} does not exist or is not a directory")
    if as_json and not dry_run:
        raise UsageError("--json needs --dry-run (a real run streams the agent's output)")
    if detach and interactive:
        raise UsageError("-d and -i do not go together: a detached run has no terminal")

    cli_mounts = tuple(parse_cli_mount(text) for text in mounts)
    catalog = load_catalog()
    implied = (*agent.agent.extra_dependencies, agent.agent.dependency) if agent else ()
    config_dir = workspace
    if worktree is not None:
        from moat.cli.worktreeinputs import enter_worktree

        workspace, config_dir, branch = enter_worktree(workspace, worktree, dry_run)
    config = load_config(config_dir, catalog, implied)
    if worktree is not None and name is None:
        name = f"{config.model.name}-{branch}" if config.model.name else branch
    require_supported(config)
    runtime, note = select.choose(runtime, config.model.runtime, os.environ)
    note = "\n".join(n for n in (note, *ignored_settings(config, agent.agent if agent else None)) if n)
    stat = workspace.stat()
    invoker = (os.getuid(), os.getgid())
    home = moat_home()
    run_id = new_run_id()
    check_configured_grants(config, home)
    names = grant_names(config.model.grants, grants)
    setup = None
    if agent is not None:
        agent_grant, named = choose_grant(agent.agent, agent.options, config, names, home, profile)
        if not named:
            names.append(agent_grant)
        resolved = resolve_grants(names, home, run_id, profile)
        setup = replace(agent.agent.setup(agent.options, config.model, agent_grant, grant_env_of(resolved)),
                        state_mounts=agent.agent.state(config.model, workspace, home))
    else:
        resolved = resolve_grants(names, home, run_id, profile)
    secrets = {} if dry_run else resolve_secrets(config.model.secrets)  # a dry run shows references, runs nothing
    network = config.model.network
    policed = network.policy == "strict" or bool(network.rules)
    if allow_hosts and not policed:
        note = ((note + "\n") if note else "") + ("--allow-host changes nothing here: network.policy is permissive"
                                                 " and every host is reachable already")
    gateway = config.model.claude.llm_gateway
    uses_proxy = bool(resolved or network.host or policed or (gateway is not None and gateway.policy is not None))
    proxy_ca = proxy_ca_for(home, create=not dry_run) if uses_proxy else None
    wants_docker = any(d.type is DepType.DOCKER for d in config.dependencies)
    request = RunRequest(
        docker_socket=docker_socket(os.environ) if wants_docker else None,
        llm_policy=read_llm_policy(config, workspace),
        workspace=workspace,
        command=command,
        env=env,
        name=name,
        runtime=runtime,
        interactive=interactive,
        identity=agent_identity(invoker, (stat.st_uid, stat.st_gid)),
        invoker=invoker,
        home=home,
        scratch_root=Path(tempfile.gettempdir()),
        stdin_is_terminal=sys.stdin.isatty() and sys.stdout.isatty() and not detach,
        host_env=dict(os.environ),
        grants=resolved,
        secrets=secrets,
        proxy_ca=proxy_ca,
        allow_hosts=allow_hosts,
        agent=setup,
        mounts=cli_mounts,
        workspace_mode=workspace_mode,
    )
    plan = build_plan(config, request, catalog, run_id=run_id)
    if plan.runtime == "kubernetes":
        from moat.cli.kuberun import print_manifests, run_on_kubernetes

        if note:
            click.echo(f"moat: {note}", err=True)
        for line in plan.notes:
            click.echo(f"moat: {line}", err=True)
        if dry_run:
            return print_manifests(plan, home, as_json)
        return run_on_kubernetes(plan, home, detach=detach, rebuild=rebuild)
    if dry_run:
        if note:
            click.echo(f"moat: {note}", err=True)
        click.echo(json.dumps(plan.to_dict(), indent=2) if as_json else render_plan(plan))
        return 0
    from moat.run.execution import Options, Run
    from moat.run.report import reporter_for
    from moat.run.signals import RunSignals
    from moat.run.store import RunStore

    if detach and plan.interactive:
        raise UsageError("moat.yaml sets interactive: true; a detached run has no terminal (use --no-interactive)")
    if keep and plan.runtime == "sandbox":
        raise UsageError("--keep keeps the agent's stopped container for a look; the sandbox runtime has none"
                         " (its agent's processes end with the run)",
                         hint="Run without --keep, or use --runtime docker.")
    # The run's signal machine, before anything slow (an engine SDK's import): a Ctrl-C from now on
    # cancels the run, and after it (while a detached run's id is printed) one is ignored.
    signals = RunSignals().install()
    reporter = reporter_for()
    if note:
        reporter.info(note)
    run_ = Run(plan, select.make(plan.runtime, plan.home, plan.identity), RunStore(plan.home), reporter,
               Options(keep=keep, rebuild=rebuild), signals=signals)
    try:
        outcome = run_.execute(detach=detach)
    finally:
        signals.ignore_from_now()
    if outcome.handed_off:
        click.echo(f"{plan.run_id} {plan.name}")
        return 0
    return outcome.exit_code if outcome.exit_code is not None else 1
