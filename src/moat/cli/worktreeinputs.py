"""What ``--worktree`` adds to a run's inputs: the worktree it runs in, where its moat.yaml is read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click


def active_in(path: Path) -> Any:
    from moat.run.registry import Registry
    from moat.run.store import RunStore

    return next((r for r in Registry(RunStore()).all() if r.active and r.metadata.get("workspace") == str(path)),
                None)


def enter_worktree(start: Path, branch: str, dry_run: bool) -> tuple[Path, Path, str]:
    """(workspace, where its moat.yaml is read, branch) for a run in BRANCH's worktree of the repository
    ``start`` is in. The worktree's moat.yaml, else the repository root's. A dry run makes nothing: a
    worktree not made yet is planned from the main checkout's tree."""
    from moat.config.load import find_config_file
    from moat.errors import UsageError
    from moat.run.store import moat_home
    from moat.run.worktrees import base_path, check_branch, ensure, find_repo, path_of

    repo = find_repo(start)
    base = base_path(os.environ, moat_home())
    if dry_run:
        check_branch(repo, branch)
        path = path_of(repo, base, branch)
        if not path.is_dir():
            click.echo(f"moat: the worktree of {branch!r} would be made at {path} (from {repo.root}'s HEAD when"
                       " the branch is new); planned from the main checkout", err=True)
            return repo.root, repo.root, branch
        return path, path if find_config_file(path) else repo.root, branch
    active = active_in(path_of(repo, base, branch))
    if active is not None:
        raise UsageError(f"a run is already active in the worktree of {branch!r}: {active.name} ({active.id})",
                         hint=f"Follow it with `moat logs -f {active.id}`, or stop it with `moat stop {active.id}`.")
    made = ensure(repo, base, branch)
    click.echo(f"moat: {'made' if made.created else 'using'} the worktree of {branch!r} at {made.path}", err=True)
    return made.path, made.path if find_config_file(made.path) else repo.root, branch
