"""moat.run.worktrees with the host's git on throwaway repositories: where a branch's worktree goes, made
and reused, which branch names are refused, what `moat wt clean` removes and keeps, and the main git
directory a run in a worktree gets (its hooks and config read-only)."""

from __future__ import annotations

import os
import re
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
    ("https://github.com/org/../../etc", "_local/proj-"),  # never a path out of the base
    ("/srv/git/proj.git", "_local/proj-"),
])
def test_a_repositorys_id_comes_from_origin_without_credentials(repo: Path, url: str, expected: str) -> None:
    _git(repo, "remote", "add", "origin", url)
    found = repo_id(repo, (os.getuid(), os.getgid()))
    if expected.endswith("-"):  # no usable origin: the directory's name and its path's hash
        assert re.fullmatch(re.escape(expected) + "[0-9a-f]{8}", found)
    else:
        assert found == expected


def test_a_branchs_worktree_is_made_from_head_then_reused(repo: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    found = find_repo(repo / "." )
    assert found.root == repo and found.id.startswith("_local/proj-")
    made = ensure(found, base, "feature/auth")
    assert made.created and made.path == base / found.id / "feature/auth"
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
    (tmp_path / "base" / found.id / "squat").mkdir(parents=True)
    with pytest.raises(UsageError, match="is not a worktree of"):
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
    (made.path / "new-file").unlink()
    (made.path / ".gitignore").write_text(".env\n")
    _git(made.path, "add", ".gitignore")
    _git(made.path, "commit", "-qm", "ignore .env")
    assert not dirty(found, made)
    (made.path / ".env").write_text("SECRET=local\n")
    assert dirty(found, made)  # an ignored file would be lost too
    (made.path / "new-file").write_text("work")
    with pytest.raises(UsageError, match="worktree remove"):
        remove(found, base, made, force=False)  # git refuses: the work would be lost
    assert (made.path / "new-file").exists()
    remove(found, base, made, force=True)
    assert not made.path.exists() and not (base / found.id / "feature").exists()  # its empty parent too
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
    mounts = plan.agent.mounts
    own = main / "worktrees" / "auth"
    assert Mount(str(main), str(main), True) in mounts  # read-only, but for what a commit writes:
    for path in (main / "objects", main / "refs", main / "logs", own):
        assert Mount(str(path), str(path)) in mounts or not path.exists()
    assert Mount(str(own / "gitdir"), str(own / "gitdir"), True) in mounts
    assert Mount(str(own / "commondir"), str(own / "commondir"), True) in mounts
    assert Mount(os.devnull, str(own / "config.worktree"), True) in mounts  # covered though missing
    writable = [Path(m.target) for m in mounts if not m.read_only]
    for planted in (main / "config", main / "hooks" / "pre-commit", main / "commondir", main / "modules" / "x",
                    main / "config.worktree", own / "config.worktree"):
        deepest = max((w for w in writable if planted.is_relative_to(w)), key=lambda w: len(w.parts), default=None)
        read_only = [Path(m.target) for m in mounts if m.read_only and planted.is_relative_to(Path(m.target))]
        assert deepest is None or any(len(r.parts) > len(deepest.parts) for r in read_only), planted


def test_a_git_file_cannot_borrow_another_repository(repo: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    _git(victim, "init", "-q")
    (victim / ".git" / "worktrees" / "x").mkdir(parents=True)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".git").write_text(f"gitdir: {victim}/.git/worktrees/x\n")  # what an agent could write
    assert main_git_dir(ws) is None
    config = parse_config("", CATALOG, file=ws / "moat.yaml")
    plan = build_plan(config, RunRequest(workspace=ws, command=("true",), runtime="docker",
                                         identity=Identity(1000, 1000), home=tmp_path / "home"), CATALOG)
    assert not any(str(victim) in m.source for m in plan.agent.mounts)


def test_wt_clean_never_runs_what_an_agent_left_in_the_worktree(repo: Path, tmp_path: Path) -> None:
    found = find_repo(repo)
    made = ensure(found, tmp_path / "base", "feature/auth")
    evil = made.path / ".evil"
    _git(made.path, "init", "-q", str(evil))
    marker = tmp_path / "PWNED"
    _git(evil, "config", "core.fsmonitor", f"touch {marker}; false #")
    (made.path / ".git").write_text(f"gitdir: {evil / '.git'}\n")  # the agent points its .git elsewhere
    dirty(found, made)
    listed(found, tmp_path / "base")
    assert not marker.exists()


def test_another_clones_worktree_is_not_reused(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "proj"
    other.parent.mkdir()
    _git(tmp_path / "other", "clone", "-q", str(repo), "proj")
    mine = ensure(find_repo(repo), tmp_path / "base", "feature/x")
    theirs = find_repo(other)
    assert theirs.id != find_repo(repo).id  # two checkouts named alike, two ids
    # Even at the same place (a shared id), the worktree is another repository's: refused.
    squatter = Repo(theirs.root, theirs.owner, find_repo(repo).id)
    with pytest.raises(UsageError, match="is not a worktree of"):
        ensure(squatter, tmp_path / "base", "feature/x")
    assert mine.path.exists()


def test_repo_is_a_value(repo: Path) -> None:
    found = find_repo(repo)
    assert found == Repo(repo, (repo.stat().st_uid, repo.stat().st_gid), found.id)
    assert found.id.startswith("_local/proj-")
