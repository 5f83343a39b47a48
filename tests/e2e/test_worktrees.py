"""moat wt for real: the agent works and commits in a worktree of a new branch; the main checkout is
untouched, the commit is on the branch, the main repository's hooks and config are read-only to the
agent; `moat wt list` shows the run, `moat wt clean` removes the worktree and keeps the branch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import WORKSPACE_UID, run_moat, share

AGENT_WORK = """
set -u
git status --short --branch
echo "agent's change" > agent.txt
git add agent.txt
git -c user.email=agent@example.invalid -c user.name=agent commit -qm "agent's commit"
if touch "$MAIN_GIT/hooks/post-checkout" 2>/dev/null; then echo hooks=writable; else echo hooks=read-only; fi
if echo "[core]" >> "$MAIN_GIT/config" 2>/dev/null; then echo config=writable; else echo config=read-only; fi
"""


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "safe.directory=*", "-c", "user.email=t@example.invalid", "-c", "user.name=t",
                           *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _repo(tmp_path: Path, config: str) -> tuple[Path, Path]:
    repo = tmp_path / "proj"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "moat.yaml").write_text(config)
    (repo / "work.sh").write_text(AGENT_WORK)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    base = tmp_path / "worktrees"
    base.mkdir()
    share(repo)
    share(base)
    return repo, base


def _check(repo: Path, base: Path, runtime: str) -> None:
    env = {"MOAT_WORKTREE_BASE": str(base)}
    before = _git(repo, "status", "--porcelain")
    result = run_moat(["wt", "feature/agent", "--runtime", runtime, "-e", f"MAIN_GIT={repo / '.git'}", "--",
                       "sh", "work.sh"], cwd=repo, env=env)
    assert result.code == 0, result.output
    assert "## feature/agent" in result.stdout
    assert "hooks=read-only" in result.stdout and "config=read-only" in result.stdout
    [repo_dir] = (base / "_local").iterdir()  # _local/proj-<hash of the checkout's path>
    worktree = repo_dir / "feature" / "agent"
    assert "made the worktree of 'feature/agent'" in result.stderr and str(worktree) in result.stderr
    assert _git(repo, "log", "-1", "--format=%s", "feature/agent") == "agent's commit"
    assert _git(repo, "status", "--porcelain") == before and not (repo / "agent.txt").exists()  # main untouched
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert worktree.stat().st_uid == WORKSPACE_UID or worktree.stat().st_uid == repo.stat().st_uid
    listed = run_moat(["wt", "list", "--json"], cwd=repo, env=env)
    assert listed.code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["branch"] == "feature/agent" and row["run_name"] == "proj-feature/agent" and row["state"] == "exited"
    # A second run reuses the worktree, with the agent's commit in it.
    again = run_moat(["wt", "feature/agent", "--runtime", runtime, "--", "git", "log", "-1", "--format=%s"],
                     cwd=repo, env=env)
    assert again.code == 0 and "agent's commit" in again.stdout and "using the worktree" in again.stderr
    cleaned = run_moat(["wt", "clean"], cwd=repo, env=env)
    assert cleaned.code == 0, cleaned.output
    assert not worktree.exists() and _git(repo, "branch", "--list", "feature/agent")


@pytest.mark.engine
def test_a_worktree_run_on_docker(engine: object, moat_home: Path, tmp_path: Path) -> None:
    repo, base = _repo(tmp_path, "name: proj\ndependencies: [git]\n")
    _check(repo, base, "docker")


@pytest.mark.sandbox
def test_a_worktree_run_in_the_sandbox(sandbox: object, moat_home: Path, tmp_path: Path) -> None:
    repo, base = _repo(tmp_path, "name: proj\n")
    _check(repo, base, "sandbox")
