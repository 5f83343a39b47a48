"""moat.run.worktrees with the host's git on throwaway repositories: where a branch's worktree goes, made
and reused, which branch names are refused, what `moat wt clean` removes and keeps, and the main git
directory a run in a worktree gets (its hooks and config read-only)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from moat.config.load import parse_config
from moat.errors import UsageError
from moat.plan.build import RunRequest, build_plan
from moat.plan.containers import Mount
from moat.plan.identity import Identity
from moat.plan.storage import main_git_dir
from moat.run.worktrees import Repo, Worktree, dirty, ensure, find_repo, listed, remove, repo_id
from tests.unit.support import CATALOG


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args], cwd=cwd,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "moat.yaml").write_text("name: proj\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


@pytest.mark.parametrize(("url", "expected"), [
    ("https://github.com/org/proj.git", "github.com/org/proj"),
    ("https://user:s3cret@github.com:8443/org/proj.git", "github.com/org/proj"),  # no credentials, no port
    ("git@github.com:org/proj.git", "github.com/org/proj"),
    ("ssh://git@gitlab.example.com/group/sub/proj", "gitlab.example.com/group/sub/proj"),
    ("https://github.com/org/../../etc", "_local/proj"),  # never a path out of the base
    ("/srv/git/proj.git", "_local/proj"),
])
def test_a_repositorys_id_comes_from_origin_without_credentials(repo: Path, url: str, expected: str) -> None:
    _git(repo, "remote", "add", "origin", url)
    assert repo_id(repo, (os.getuid(), os.getgid())) == expected


def test_a_branchs_worktree_is_made_from_head_then_reused(repo: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    found = find_repo(repo / "." )
    assert found.root == repo and found.id == "_local/proj"
    made = ensure(found, base, "feature/auth")
    assert made.created and made.path == base / "_local/proj/feature/auth"
    assert _git(made.path, "rev-parse", "--abbrev-ref", "HEAD") == "feature/auth"
    assert (made.path / "moat.yaml").read_text() == "name: proj\n"
    again = ensure(found, base, "feature/auth")
    assert not again.created and again.path == made.path
    # From inside the worktree, the repository is still the main checkout.
    assert find_repo(made.path).root == repo
    assert listed(found, base) == [Worktree("feature/auth", made.path)]
    # An existing branch is checked out as it is.
    _git(repo, "branch", "existing")
    assert _git(ensure(found, base, "existing").path, "rev-parse", "--abbrev-ref", "HEAD") == "existing"


@pytest.mark.parametrize("branch", ["", "-rf", "../up", "a/../b", "a//b", "bad..name", "x.lock", "sp ace", "/abs"])
def test_unsafe_or_invalid_branch_names_are_refused(repo: Path, tmp_path: Path, branch: str) -> None:
    with pytest.raises(UsageError):
        ensure(find_repo(repo), tmp_path / "base", branch)
    assert not (tmp_path / "base").exists() or not any((tmp_path / "base").rglob("*.git"))


def test_a_checked_out_branch_or_a_directory_in_the_way_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    found = find_repo(repo)
    with pytest.raises(UsageError, match="git worktree add failed"):
        ensure(found, tmp_path / "base", "main")  # checked out in the main checkout already
    (tmp_path / "base" / "_local" / "proj" / "squat").mkdir(parents=True)
    with pytest.raises(UsageError, match="is not a git worktree"):
        ensure(found, tmp_path / "base", "squat")


def test_outside_a_repository_or_before_a_commit(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not inside a git repository"):
        find_repo(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    with pytest.raises(UsageError, match="no commit yet"):
        ensure(find_repo(empty), tmp_path / "base", "x")


def test_clean_removes_a_worktree_through_git_and_keeps_the_branch(repo: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    found = find_repo(repo)
    made = ensure(found, base, "feature/auth")
    assert not dirty(found, made)
    (made.path / "new-file").write_text("work")
    assert dirty(found, made)
    with pytest.raises(UsageError, match="worktree remove"):
        remove(found, base, made, force=False)  # git refuses: the work would be lost
    assert (made.path / "new-file").exists()
    remove(found, base, made, force=True)
    assert not made.path.exists() and not (base / "_local/proj/feature").exists()  # its empty parent too
    assert _git(repo, "branch", "--list", "feature/auth")  # the branch stays
    with pytest.raises(UsageError, match="not a worktree of moat's"):
        remove(found, base, Worktree("x", tmp_path / "elsewhere"), force=True)


def test_a_run_in_a_worktree_gets_the_main_git_directory_with_hooks_and_config_read_only(repo: Path,
                                                                                          tmp_path: Path) -> None:
    made = ensure(find_repo(repo), tmp_path / "base", "feature/auth")
    main = repo / ".git"
    assert main_git_dir(made.path) == main and main_git_dir(repo) is None
    config = parse_config("", CATALOG, file=made.path / "moat.yaml")
    plan = build_plan(config, RunRequest(workspace=made.path, command=("true",), runtime="docker",
                                         identity=Identity(1000, 1000), home=tmp_path / "home"), CATALOG)
    owner = (main.stat().st_uid, main.stat().st_gid)
    assert Mount(str(main), str(main)) in plan.agent.mounts
    assert Mount(str(main / "hooks"), str(main / "hooks"), True, create=True, owner=owner) in plan.agent.mounts
    assert Mount(str(main / "config"), str(main / "config"), True) in plan.agent.mounts


def test_repo_is_a_value(repo: Path) -> None:
    found = find_repo(repo)
    assert found == Repo(repo, (repo.stat().st_uid, repo.stat().st_gid), "_local/proj")
