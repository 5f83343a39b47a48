"""Where an agent's session transcripts live on the host, so that the next run can resume them.

Claude Code keeps a workspace's sessions in ``~/.claude/projects/<slug>/<session-id>.jsonl``, the slug
being the workspace's path with every character but letters and digits turned into '-'. moat mounts
the host's directory for the workspace where Claude Code looks for ``/workspace``'s
(``~/.claude/projects/-workspace``), as the Go tool does: sessions of a run are on the host when it
ends, ``claude --continue`` finds the latest of them, and the host's own Claude Code sees them too.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from moat.constants import WORKSPACE_MOUNT

SESSION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CLAUDE_PROJECTS = ".claude/projects"


def slug(path: str) -> str:
    """Claude Code's name for a project directory: '/home/a/x.y' → '-home-a-x-y'."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def claude_project_dir(workspace: Path, host_home: Path) -> Path:
    return host_home / CLAUDE_PROJECTS / slug(str(workspace))


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
