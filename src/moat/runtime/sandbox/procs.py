"""Processes the sandbox started, named so that any moat process can find and end them.

A pid alone names nothing (pids are reused): a process is its pid and its kernel start time. A zombie
counts as ended (this machine's init reaps orphans only every few seconds). Signals go through a
pidfd opened before the start time is checked, so a pid reused meanwhile never receives one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    state: str
    ppid: int
    pgid: int
    sid: int
    start: int


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        found = stat(pid)
        return None if found is None else cls(pid, found.start)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: Any) -> Proc | None:
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        return cls(int(data["pid"]), int(data.get("start") or 0))


def stat(pid: int) -> Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return Stat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def alive(proc: Proc | None) -> bool:
    if proc is None:
        return False
    found = stat(proc.pid)
    return found is not None and found.start == proc.start and found.state not in ("Z", "X")


def send(proc: Proc | None, signum: int) -> bool:
    """Signal exactly this process; False when it has ended (or was never ours to signal)."""
    if proc is None:
        return False
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return False
    try:
        if not alive(proc):  # checked after the pidfd pinned the pid: it cannot be reused now
            return False
        signal.pidfd_send_signal(fd, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(fd)


def signal_group(leader: Proc | None, signum: int) -> bool:
    """Signal the process group ``leader`` leads, while it lives (so the group id is its own)."""
    if not alive(leader):
        return False
    assert leader is not None
    try:
        os.killpg(leader.pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def processes() -> Iterator[tuple[int, Stat]]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            found = stat(int(entry.name))
            if found is not None and found.state not in ("Z", "X"):
                yield int(entry.name), found


def group_members(leader: Proc) -> list[Proc]:
    """What is left of the group ``leader`` started, even once the leader itself has ended.

    A group id cannot be handed to a new process while a member of the group lives, so members
    started no earlier than the leader are the leader's, unless the leader's pid now names another.
    """
    now = stat(leader.pid)
    if now is not None and now.start != leader.start:
        return []  # the pid (and so the group id) belongs to someone else now
    return [Proc(pid, s.start) for pid, s in processes() if s.pgid == leader.pid and s.start >= leader.start]


def children(proc: Proc | None) -> list[Proc]:
    if not alive(proc):
        return []
    assert proc is not None
    try:
        text = (PROC / str(proc.pid) / "task" / str(proc.pid) / "children").read_text()
    except OSError:
        return []
    found = (Proc.of(int(pid)) for pid in text.split())
    return [p for p in found if p is not None]


def descendants(proc: Proc | None) -> list[Proc]:
    """Its children, theirs, and so on (breadth first)."""
    found: list[Proc] = []
    level = children(proc)
    while level:
        found += level
        level = [grandchild for child in level for grandchild in children(child)]
    return found


def tagged(tag: str) -> list[Proc]:
    """Processes whose command line holds ``tag`` as one argument (the sandbox tags every bwrap)."""
    wanted = tag.encode()
    found = []
    for pid, s in processes():
        with contextlib.suppress(OSError):
            if wanted in (PROC / str(pid) / "cmdline").read_bytes().split(b"\0"):
                found.append(Proc(pid, s.start))
    return found


def environ(proc: Proc | None) -> dict[str, str] | None:
    if not alive(proc):
        return None
    assert proc is not None
    try:
        data = (PROC / str(proc.pid) / "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in data.split(b"\0") if item)
    return {key: value for key, _, value in pairs}
