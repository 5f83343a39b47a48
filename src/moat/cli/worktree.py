"""``moat wt BRANCH [-- CMD]``, ``moat wt list``, ``moat wt clean [BRANCH]``, and ``--worktree`` on the
commands that start a run: a run in a git worktree of the branch (see moat.run.worktrees)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from moat.cli.run import COMMAND_META, RunCommand, common_options, start_run
from moat.cli.table import echo_table
from moat.cli.worktreeinputs import active_in


class WorktreeGroup(click.Group):
    """``moat wt BRANCH …`` starts a run; ``moat wt list|clean`` are subcommands (a branch named
    list or clean is started with ``moat wt start list``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=WorktreeGroup)
def wt() -> None:
    """Run in a git worktree of a branch: `moat wt BRANCH [-- CMD]` makes the branch (from HEAD) and its
    worktree under MOAT_HOME/worktrees (or $MOAT_WORKTREE_BASE) when new, and starts a run there,
    named NAME-BRANCH; `moat wt list` and `moat wt clean` manage them. Never deletes a branch."""


@wt.command("start", cls=RunCommand)
@click.argument("branch")
@click.option("-i", "--interactive/--no-interactive", default=None,
              help="Attach your terminal to the agent (default: moat.yaml's interactive).")
@common_options
@click.pass_context
def start(ctx: click.Context, /, branch: str, interactive: bool | None, **options: Any) -> Any:
    """Start a run in BRANCH's worktree of the repository you are in."""
    from moat.errors import UsageError

    if options.get("worktree"):
        raise UsageError("moat wt takes the branch as its argument; leave out --worktree")
    options["worktree"] = branch
    return start_run(Path("."), ctx.meta.get(COMMAND_META, ()), interactive, **options)


@wt.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json: bool) -> None:
    """The worktrees moat made for the repository you are in, each with its latest run."""
    from moat.run.registry import Registry
    from moat.run.store import RunStore, moat_home
    from moat.run.worktrees import base_path, find_repo, listed

    repo = find_repo(Path.cwd())
    found = listed(repo, base_path(os.environ, moat_home()))
    runs = Registry(RunStore()).all()  # newest first
    rows = []
    for worktree in found:
        latest = next((r for r in runs if r.metadata.get("workspace") == str(worktree.path)), None)
        rows.append({"branch": worktree.branch, "path": str(worktree.path),
                     "run_name": latest.name if latest else None, "run_id": latest.id if latest else None,
                     "state": latest.state if latest else None})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No worktrees of moat's for {repo.root}.")
        return
    table = [("BRANCH", "RUN NAME", "STATE", "WORKTREE")]
    table += [(str(r["branch"]), str(r["run_name"] or "-"), str(r["state"] or "-"), str(r["path"])) for r in rows]
    echo_table(table)


@wt.command("clean")
@click.argument("branch", required=False)
@click.option("-f", "--force", is_flag=True,
              help="Also remove worktrees with changes that are not committed (they are lost).")
def clean(branch: str | None, force: bool) -> None:
    """Remove the worktrees (all, or BRANCH's) of the repository you are in that no active run uses.
    Branches stay; a worktree with uncommitted changes stays unless -f."""
    from moat.errors import UsageError
    from moat.run.store import moat_home
    from moat.run.worktrees import base_path, dirty, find_repo, listed, remove

    repo = find_repo(Path.cwd())
    base = base_path(os.environ, moat_home())
    found = listed(repo, base)
    if branch is not None:
        found = [w for w in found if w.branch == branch]
        if not found:
            raise UsageError(f"moat made no worktree of {branch!r} for {repo.root}", hint="`moat wt list` lists them.")
    removed = 0
    for worktree in found:
        active = active_in(worktree.path)
        if active is not None:
            click.echo(f"kept {worktree.branch}: run {active.name} ({active.id}) is active in it", err=True)
            continue
        if not force and dirty(repo, worktree):
            click.echo(f"kept {worktree.branch}: it has changes that are not committed (commit them, or -f to"
                       " lose them)", err=True)
            continue
        remove(repo, base, worktree, force)
        removed += 1
        click.echo(f"removed the worktree of {worktree.branch} ({worktree.path}); the branch stays")
    if not found:
        click.echo(f"No worktrees of moat's for {repo.root}.")
