"""Starting, signalling and ending the sandbox's process trees: the holder and the containers.

A container is three processes: bubblewrap's *monitor* (our child, whose exit status is the
command's), the *init* of its pid namespace, and the command under that init. Killing the init ends
the namespace and so everything in it, however the command forked, detached or renamed itself.
Nothing here trusts one pid: an end is found from the record's pids (with start times), the
process group, the cgroup and, for a moat that died before recording them, the tag on bwrap's
command line. Each is checked before it is signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from moat.errors import EngineError
from moat.plan.identity import Identity
from moat.runtime.sandbox import cgroups, launch, procs
from moat.runtime.sandbox.procs import Proc

INSTALL_HINT = "Install Debian's bubblewrap (sudo apt-get install bubblewrap util-linux), or use --runtime docker."
KILL_WAIT = 5.0  # seconds for killed processes to be gone


def _read_info(read_fd: int) -> dict[str, Any]:
    with os.fdopen(read_fd, "rb") as info:
        text = info.read()
    try:
        found: dict[str, Any] = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return found


def _abandon(process: subprocess.Popen[bytes], init: Proc | None = None) -> None:
    procs.send(init, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        process.kill()
    process.wait()


def start_holder(identity: Identity, tag: str, stderr: IO[bytes]) -> tuple[subprocess.Popen[bytes], Proc]:
    """The holder of a run's network namespace; (bwrap, the sleeping process inside)."""
    read, write = os.pipe()
    try:
        holder = subprocess.Popen(launch.holder(identity, tag, write), pass_fds=(write,), start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd="/",
                                  env=launch.base_env(identity), **launch.as_identity(identity))
    finally:
        os.close(write)
    try:
        info = _read_info(read)
        child = Proc.of(int(info["child-pid"])) if "child-pid" in info else None
    except BaseException:  # interrupted before it is recorded: nothing else could find it by pid
        _abandon(holder)
        raise
    if child is None:
        _abandon(holder)
        raise EngineError("could not create the sandbox network (bubblewrap failed)", hint=INSTALL_HINT)
    return holder, child


@dataclass
class Streams:
    stdin: int | IO[Any] | None
    stdout: int | IO[Any] | None
    stderr: int | IO[Any] | None


def start_box(argv: Callable[[int, int, int], list[str]], *, identity: Identity, env: Mapping[str, str],
              streams: Streams, status: IO[bytes], keep_fds: Sequence[int],
              cgroup_paths: Sequence[str], recorded: Callable[[Proc, Proc], None],
              log: Callable[[], str]) -> tuple[subprocess.Popen[bytes], Proc]:
    """Start a container: its bwrap blocks until its processes are recorded (``recorded(monitor, init)``)
    and in their cgroups, so none of them runs a moment outside either. (monitor process, init).

    Every container is in a session of its own, without moat's terminal: an interactive agent gets a
    pty of its own (``terminal.Terminal``), never the terminal moat was started from."""
    info_read, info_write = os.pipe()
    block_read, block_write = os.pipe()
    command = argv(info_write, status.fileno(), block_read)
    try:
        monitor = subprocess.Popen(
            command, pass_fds=(info_write, block_read, status.fileno(), *keep_fds), env=dict(env), cwd="/",
            start_new_session=True, stdin=streams.stdin, stdout=streams.stdout, stderr=streams.stderr,
            **launch.as_identity(identity))
    except BaseException:
        for fd in (info_read, block_write):
            os.close(fd)
        raise
    finally:
        os.close(info_write)
        os.close(block_read)
    init = None
    try:
        info = _read_info(info_read)
        init = Proc.of(int(info["child-pid"])) if "child-pid" in info else None
        own = Proc.of(monitor.pid)
        if init is None or own is None:
            raise _failed(monitor, identity, log)
        recorded(own, init)
        cgroups.enter(list(cgroup_paths), init.pid)
        try:
            os.write(block_write, b"go")
        except BrokenPipeError:  # it failed while setting up
            raise _failed(monitor, identity, log) from None
    except BaseException:
        _abandon(monitor, init)
        raise
    finally:
        os.close(block_write)
    return monitor, init


def _failed(monitor: subprocess.Popen[bytes], identity: Identity, log: Callable[[], str]) -> EngineError:
    with contextlib.suppress(subprocess.TimeoutExpired):
        monitor.wait(KILL_WAIT)
    said = monitor.stderr.read().decode(errors="replace") if monitor.stderr else log()
    detail = said.strip().splitlines()[-1] if said.strip() else "bubblewrap failed"
    hint = INSTALL_HINT
    if "Permission denied" in detail:
        hint = (f"The sandbox runs as uid {identity.uid}, which must be able to reach what it mounts (the"
                " workspace and every directory above it).")
    return EngineError(f"could not start the sandbox container: {detail}", hint=hint)


def signal_container(record: Mapping[str, Any], signum: int) -> None:
    """Deliver ``signum`` to the container's command and what it started (not to bubblewrap)."""
    init = Proc.from_json(record.get("init"))
    if record.get("interactive"):  # its command leads a session of its own (its pty's): one by one
        for process in procs.descendants(init):
            procs.send(process, signum)
    else:  # the init leads the container's own session
        procs.signal_group(init, signum)


def signal_when_running(record: Mapping[str, Any], signum: int, timeout: float = 2.0) -> None:
    """Deliver ``signum`` once the container's init has started its command (just after its start)."""
    init, deadline = Proc.from_json(record.get("init")), time.monotonic() + timeout
    while procs.alive(init) and not procs.children(init) and time.monotonic() < deadline:
        time.sleep(0.001)
    signal_container(record, signum)


def running(record: Mapping[str, Any]) -> bool:
    return procs.alive(Proc.from_json(record.get("monitor"))) or procs.alive(Proc.from_json(record.get("init")))


def _remaining(record: Mapping[str, Any], tagged: Sequence[Proc]) -> list[Proc]:
    found = [Proc.from_json(record.get(key)) for key in ("init", "monitor")]
    mine = [p for p in found if p is not None]
    monitor = Proc.from_json(record.get("monitor"))
    if monitor is not None:
        mine += procs.group_members(monitor)
    init = Proc.from_json(record.get("init"))
    if init is not None:
        mine += procs.group_members(init)
    for pid in cgroups.members(list(record.get("cgroups") or [])):
        proc = Proc.of(pid)
        if proc is not None:
            mine.append(proc)
    return [p for p in {*mine, *tagged} if procs.alive(p)]


def kill(record: Mapping[str, Any], own: subprocess.Popen[bytes] | None = None) -> None:
    """End every process of a holder or container (from its record alone), and wait until they have."""
    tag = record.get("tag")
    tagged = procs.tagged(tag) if tag else []
    deadline = time.monotonic() + KILL_WAIT
    while True:
        left = _remaining(record, tagged)
        if not left or time.monotonic() > deadline:
            break
        # The init first: its namespace's processes all go with it.
        for proc in sorted(left, key=lambda p: p != Proc.from_json(record.get("init"))):
            procs.send(proc, signal.SIGKILL)
        time.sleep(0.01)
    if own is not None:
        own.wait()
    if tag and procs.tagged(tag):  # a process being started while we looked
        for proc in procs.tagged(tag):
            procs.send(proc, signal.SIGKILL)
