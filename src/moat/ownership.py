"""Who owns what moat leaves on a machine: a moat process (pid, host and start time) and a MOAT_HOME.

Engine objects carry their owner in labels, runs in their metadata. An object or run is only ever
reaped when its owner is provably gone, and only by a moat using the same MOAT_HOME (another user's,
or a test's, is never touched).
"""

from __future__ import annotations

import hashlib
import os
import socket
from functools import cache
from pathlib import Path

from moat.constants import LABEL_HOME, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_START


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (with the pid, it names one process: pids are reused)."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def ended(pid: int) -> bool:
    """Gone, or a zombie: dead, waiting only for its parent to reap it (which may never happen)."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


@cache
def home_id(home: Path) -> str:
    return hashlib.sha256(str(home.expanduser().resolve()).encode()).hexdigest()[:16]


def owner_labels(home: Path) -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: process_start(pid) or "",
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_HOME: home_id(home),
    }


def owner_metadata() -> dict[str, object]:
    pid = os.getpid()
    return {"pid": pid, "pid_start": process_start(pid), "host": socket.gethostname()}


def same_host(host: str | None) -> bool:
    return not host or host == socket.gethostname()


def process_alive(pid: int, host: str | None, start: str | None = None) -> bool:
    """Whether the moat process ``pid`` (started at ``start``) on ``host`` is still running.

    Another machine's process is assumed alive: it is never ours to judge or touch.
    """
    if not same_host(host):
        return True
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    if Path("/proc/self/stat").exists() and ended(pid):
        return False  # a killed owner whose parent does not reap it is as dead as one reaped
    now = process_start(pid)
    if start and now is not None:
        return now == start  # the same process, not a reused pid
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"moat" in cmdline.read_bytes()
    except OSError:
        return True  # no /proc to ask: the pid exists


def signal_process(pid: int, start: str | None, signum: int) -> bool:
    """Send ``signum`` to the process ``pid`` only if it is still the one that started at ``start``.

    The process is pinned first (a pidfd), then its start time is checked, then the pidfd is
    signalled: a pid reused in between can never receive it. False when the process is gone (or
    is not that process any more).
    """
    import signal as signals  # noqa: PLC0415

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfds here (old kernel): check and signal as closely as possible
        if start is not None and process_start(pid) != start:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
    try:
        if start is not None and process_start(pid) != start:
            return False
        try:
            signals.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            return False
        return True
    finally:
        os.close(fd)
