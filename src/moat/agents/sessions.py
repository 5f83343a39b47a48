"""Where an agent's session transcripts are kept on the host, so that the next run can resume them
(Claude Code's, Codex's and Gemini CLI's; each agent's own directory under MOAT_HOME/sessions).

Claude Code keeps a project's sessions in ``~/.claude/projects/<slug>/<session-id>.jsonl``. moat keeps
each workspace's in a directory of its own, ``MOAT_HOME/sessions/claude/<workspace slug>-<hash>``,
linked where the agent's Claude Code looks for ``/workspace``'s: a run's sessions outlive it, and
``claude --continue`` finds the latest. Not the host's own ``~/.claude/projects`` (the Go tool's
choice): that would show the agent every transcript the host's Claude Code ever wrote for the
workspace (what its tools printed, secrets among it), let it plant sessions the host's unsandboxed
Claude Code would resume, and make moat create directories in the user's home as root under sudo.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime
from pathlib import Path

from moat.constants import WORKSPACE_MOUNT

SESSION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CLAUDE_PROJECTS = ".claude/projects"


def slug(path: str) -> str:
    """Claude Code's name for a project directory: '/home/a/x.y' → '-home-a-x-y'."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def sessions_dir(agent: str, workspace: Path, moat_home: Path) -> Path:
    """The workspace's sessions of ``agent``: a readable name (at most 80 characters) and a hash that
    tells apart workspaces whose names read alike, whatever the path's length."""
    digest = hashlib.sha256(os.fsencode(workspace)).hexdigest()[:12]  # any bytes a path may hold
    return moat_home / "sessions" / agent / f"{slug(str(workspace))[-80:].lstrip('-')}-{digest}"


def claude_project_dir(workspace: Path, moat_home: Path) -> Path:
    return sessions_dir("claude", workspace, moat_home)


# Codex keeps its transcripts by date (~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl), not by project,
# and Gemini CLI its chats under ~/.gemini/tmp/<hash of the project>/: each agent's whole directory is
# the workspace's own (the Go tool's choice for Codex; Gemini's it does not keep).
CODEX_SESSIONS = ".codex/sessions"
GEMINI_SESSIONS = ".gemini/tmp"


def claude_mount_target() -> str:
    """Under the agent's $HOME: where Claude Code keeps /workspace's sessions (linked to the mount)."""
    return f"{CLAUDE_PROJECTS}/{slug(WORKSPACE_MOUNT)}"


def session_between(directory: Path, started: datetime, ended: datetime | None) -> str | None:
    """The id of the session last written while a run ran (its transcript's mtime in the run's time)."""
    best: tuple[float, str] | None = None
    low = started.timestamp() - 1  # file times and the record's are taken by different clocks' reads
    high = ended.timestamp() + 5 if ended else float("inf")  # the last write lands as the agent ends
    try:
        entries = list(directory.iterdir())
    except OSError:
        return None
    for entry in entries:
        if entry.suffix != ".jsonl" or not SESSION_ID.fullmatch(entry.stem):
            continue
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        if low <= mtime <= high and (best is None or mtime > best[0]):
            best = (mtime, entry.stem)
    return best[1].lower() if best else None
