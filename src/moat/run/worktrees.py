"""Git worktrees for runs (``moat wt BRANCH``, ``--worktree``), as the Go tool keeps them: one checkout
per branch at ``<base>/<repo-id>/<branch>``, base ``$MOAT_WORKTREE_BASE`` or ``MOAT_HOME/worktrees``,
the branch made from HEAD when missing, the run named ``<name>-<branch>`` (or ``<branch>``).

git runs as the repository's owner (never as root in someone else's repository: its hooks and
filters would run as root), without hooks of the repository's, without a terminal and without the
network (nothing here fetches). A worktree's ``.git`` is a file naming the main repository's git
directory by its host path: a run in a worktree gets that directory at the same path (git works in
it), with its ``hooks`` and ``config`` read-only (the agent could otherwise leave a hook or a filter
there that runs on the host, the next time you use git).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from moat.errors import MoatError, UsageError
from moat.plan.identity import Identity
from moat.plan.storage import worktree_admin
from moat.runtime.sandbox.launch import reachable

ENV_BASE = "MOAT_WORKTREE_BASE"
_SAFE_PART = re.compile(r"[A-Za-z0-9._-]+")
GIT_TIMEOUT = 120.0  # seconds: a checkout of a large tree is slow, a hung git is not waited for


@dataclass(frozen=True)
class Repo:
    root: Path
    owner: tuple[int, int]  # uid, gid: who git runs as
    id: str  # host/owner/name from origin, or _local/<directory>


@dataclass(frozen=True)
class Worktree:
    branch: str
    path: Path
    created: bool = False


def base_path(env: Mapping[str, str], home: Path) -> Path:
    given = env.get(ENV_BASE, "")
    return Path(given).expanduser().absolute() if given else home / "worktrees"


def _git(repo_root: Path, owner: tuple[int, int], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    as_other = os.getuid() == 0 and owner[0] != 0
    try:
        env["HOME"] = pwd.getpwuid(owner[0]).pw_dir if as_other else os.environ.get("HOME", "/")
    except KeyError:
        env["HOME"] = "/nonexistent"
    # No hook, no fsmonitor command: a worktree's files are the agent's, and so may be what git reads.
    command = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-C", str(repo_root), *args]
    try:
        if as_other:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT, check=False,
                                  user=owner[0], group=owner[1], extra_groups=[])
        else:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise UsageError("worktrees need git, and it is not installed", hint="Install git (apt-get install git).") \
            from None
    except subprocess.TimeoutExpired:
        raise MoatError(f"git {args[0]} took over {GIT_TIMEOUT:.0f} s in {repo_root}; stopped") from None
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise UsageError(f"git {' '.join(args[:2])} failed in {repo_root}: {' '.join(message[-3:])[:500]}")
    return done


def find_repo(start: Path) -> Repo:
    """The repository ``start`` is in (its main checkout when ``start`` is a worktree of it)."""
    try:
        info = start.stat()
    except OSError as exc:
        raise UsageError(f"{start}: {exc.strerror}") from None
    owner = (info.st_uid, info.st_gid)
    done = _git(start, owner, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
    if done.returncode != 0:
        raise UsageError(f"{start} is not inside a git repository; worktrees are git's",
                         hint="Run it in a git checkout (git init, or clone one).")
    common = Path(done.stdout.strip())
    root = common.parent if common.name == ".git" else common
    if not (root / ".git").is_dir():
        raise UsageError(f"{start}: the repository at {common} has no working tree (a bare repository)")
    owner = (root.stat().st_uid, root.stat().st_gid)
    return Repo(root, owner, repo_id(root, owner))


def repo_id(root: Path, owner: tuple[int, int]) -> str:
    """``host/owner/name`` from origin's URL (no user, password or port), else ``_local/<dir>``;
    every part a safe directory name."""
    done = _git(root, owner, "remote", "get-url", "origin", check=False)
    url = done.stdout.strip() if done.returncode == 0 else ""
    parts: list[str] = []
    if url:
        if "://" in url:
            split = urlsplit(url)
            parts = [split.hostname or "", *split.path.split("/")]
        elif ":" in url and not url.startswith("/"):  # git@host:owner/name
            host, _, path = url.partition(":")
            parts = [host.rpartition("@")[2], *path.split("/")]
        if parts:
            parts[-1] = parts[-1].removesuffix(".git")
        parts = [p for p in parts if p]
    if not parts or not all(_SAFE_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        # Two checkouts named alike are two repositories: the path's hash tells them apart.
        name = root.name if _SAFE_PART.fullmatch(root.name) else "repo"
        return f"_local/{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    return "/".join(parts)


def check_branch(repo: Repo, branch: str) -> None:
    if not branch or branch.startswith(("-", "/")) or ".." in branch.split("/") or "//" in branch:
        raise UsageError(f"{branch!r} is not a branch name moat can make a worktree for",
                         hint="Use a name such as dark-mode or feature/auth.")
    if _git(repo.root, repo.owner, "check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise UsageError(f"{branch!r} is not a valid git branch name", hint="See git check-ref-format.")


def path_of(repo: Repo, base: Path, branch: str) -> Path:
    return base / repo.id / branch


def ensure(repo: Repo, base: Path, branch: str) -> Worktree:
    """The branch's worktree: reused when there, else made (with the branch, from HEAD, when it is new)."""
    check_branch(repo, branch)
    path = path_of(repo, base, branch)
    if path.exists():
        found = worktree_admin(path)
        if found is None or found[0].resolve() != (repo.root / ".git").resolve():
            raise UsageError(f"{path} exists and is not a worktree of {repo.root} (another clone's, or no"
                             " worktree at all)", hint=f"Move it away, or set {ENV_BASE}.")
        return Worktree(branch, path)
    has_branch = _git(repo.root, repo.owner, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                      check=False).returncode == 0
    if not has_branch and _git(repo.root, repo.owner, "rev-parse", "--verify", "--quiet", "HEAD",
                               check=False).returncode != 0:
        raise UsageError(f"{repo.root} has no commit yet: there is nothing to make branch {branch!r} from",
                         hint="Commit something first.")
    _make_parent(path.parent, repo.owner, base)
    args = ["worktree", "add", str(path), branch] if has_branch else ["worktree", "add", "-b", branch, str(path)]
    _git(repo.root, repo.owner, *args)
    return Worktree(branch, path, created=True)


def _make_parent(parent: Path, owner: tuple[int, int], base: Path) -> None:
    """The directories down to the worktree's parent, the repository owner's (git runs as them)."""
    missing = []
    probe = parent
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        if os.getuid() == 0:
            os.chown(directory, *owner)
    # git, as the owner, must reach and write it: say so now, not with git's words.
    if os.getuid() == 0 and owner[0] != 0 and (not reachable(str(parent), Identity(*owner))
                                              or parent.stat().st_uid != owner[0]):
            raise UsageError(f"the repository's owner (uid {owner[0]}) cannot make a worktree in {parent}",
                             hint=f"Set {ENV_BASE} to a directory that user can write.")


def listed(repo: Repo, base: Path) -> list[Worktree]:
    """The worktrees moat made for this repository (git's list, those under the base)."""
    done = _git(repo.root, repo.owner, "worktree", "list", "--porcelain")
    top = (base / repo.id).resolve()  # git records real paths (a base through a link too)
    found = []
    for block in done.stdout.split("\n\n"):
        fields = dict(line.partition(" ")[::2] for line in block.splitlines() if line)
        path = Path(fields.get("worktree", "")).resolve()
        if fields.get("worktree") and path.is_relative_to(top) and path != top:
            found.append(Worktree(str(path.relative_to(top)), path))
    return found


def dirty(repo: Repo, worktree: Worktree) -> bool:
    """Whether removing the worktree would lose anything: changes, untracked or ignored files (a
    local .env). Read through the main repository's record of the worktree, never the worktree's own
    ``.git`` (the agent's to rewrite); a worktree without that record counts as dirty."""
    found = worktree_admin(worktree.path)
    if found is None:
        return True
    _, admin = found
    done = _git(repo.root, repo.owner, f"--git-dir={admin}", f"--work-tree={worktree.path}", "status",
                "--porcelain", "--untracked-files=all", "--ignored", check=False)
    return done.returncode != 0 or bool(done.stdout.strip())


def remove(repo: Repo, base: Path, worktree: Worktree, force: bool) -> None:
    """The worktree's directory, through git (never a branch). A worktree with changes that are not
    committed is refused unless ``force``: they would be lost."""
    top = (base / repo.id).resolve()
    if not worktree.path.resolve().is_relative_to(top):
        raise UsageError(f"{worktree.path} is not a worktree of moat's (outside {base / repo.id})")
    _git(repo.root, repo.owner, "worktree", "remove", *(["--force"] if force else []), str(worktree.path))
    _git(repo.root, repo.owner, "worktree", "prune", check=False)
    # Its now-empty parents (feature/ of feature/auth), up to the repository's directory.
    parent = worktree.path.resolve().parent
    while parent != top and parent.is_relative_to(top):
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
