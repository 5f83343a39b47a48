"""``moat run -d``: the foreground hands a prepared run to a supervisor process, atomically.

The protocol (over the supervisor's stdin and stdout pipes; secrets never touch the disk):

1. the foreground starts ``python -m moat.run.supervisor`` in a new session and sends the run's
   state (the plan, and what exists as plain resource records);
2. the supervisor adopts it (opens the record, takes its own cache holds) and says ``ready``;
3. the foreground *commits*: in one step with respect to signals, it records the supervisor as the
   run's owner, writes ``commit``, and empties its own scope. Before the commit, a signal cancels
   the hand-off (the supervisor, seeing its stdin close, leaves without touching anything, and the
   foreground tears down); after it, signals are passed on to the supervisor, which owns the run;
4. the supervisor starts the agent and says ``started``; the foreground prints the run's id.

If the supervisor dies after the commit without starting the agent, the foreground reaps the run
(its owner is gone) and reports the supervisor's last words.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from moat.errors import EngineError
from moat.ownership import owner_metadata, process_start
from moat.run.signals import HANDED_OFF, HANDING_OFF, Interrupted
from moat.run.startup import Started

if TYPE_CHECKING:
    from moat.run.execution import Run

READY = "ready"
COMMIT = "commit"
STARTED = "started"
HANDOFF_TIMEOUT = 120.0  # seconds for the supervisor to adopt the run, and then to start the agent
SUPERVISOR_LOG = "supervisor.log"
POLL = 0.1


def pack(state: dict[str, Any]) -> bytes:
    data = pickle.dumps(state)
    return struct.pack("!Q", len(data)) + data


def unpack(stream: IO[bytes]) -> dict[str, Any]:
    (size,) = struct.unpack("!Q", _read_exactly(stream, 8))
    state: dict[str, Any] = pickle.loads(_read_exactly(stream, size))  # noqa: S301 — from our own parent
    return state


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("the hand-off was cut short")
        data += chunk
    return data


def hand_off(run: Run, started: Started) -> None:
    """Pass the prepared run to a supervisor; return once the agent has started under it."""
    record = run.record
    passed_on: list[int] = []  # signals passed on to the supervisor after the commit
    supervisor: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int) -> None:
        # Only ever called once the run is the supervisor's (the HANDED_OFF phase).
        passed_on.append(signum)
        if supervisor is not None and supervisor.poll() is None:
            supervisor.send_signal(signum)  # a child we started: its pid cannot have been reused

    run.signals.advance(HANDING_OFF)
    supervisor = _spawn(record.dir / SUPERVISOR_LOG)
    try:
        _send(supervisor, pack({
            "plan": run.plan,
            "options": run.options,
            "resources": run.scope.records(),
            "started": started,
            "released": sorted(run.agent_state.released),
            "timeline": run.timeline.marks(),
            "elapsed": run.timeline.elapsed(),
        }), run)
        _expect(supervisor, READY, run)
        # The commit: a signal handled before it cancels the hand-off; one handled after is passed on.
        # The record names its new owner first, so the run is never without a live owner on record.
        run.signals.advance(HANDED_OFF, handoff=on_signal)
        record.update(pid=supervisor.pid, pid_start=process_start(supervisor.pid), detached=True)
        try:
            _send(supervisor, f"{COMMIT}\n".encode(), run, last=True)
        except EngineError:
            record.update(**owner_metadata())  # it never read the commit: the run is still ours
            raise
        run.handed_off = True
        run.scope.hand_over()
    except BaseException:
        if not run.handed_off:
            _dismiss(supervisor)  # ours to tear down: the supervisor goes without touching anything
        raise
    try:
        _expect(supervisor, STARTED, run)
    except EngineError:
        if passed_on:
            # It ended because it was told to (a Ctrl-C right after the commit): its teardown and
            # its record are its own; ours is only to wait for it and say so.
            _wait_for(supervisor)
            raise Interrupted(passed_on[0]) from None
        _reap_after(run, supervisor)
        raise
    run.holds.release_all()  # the supervisor holds its own
    run.events.info(f"run {run.plan.name} ({run.plan.run_id}) is running in the background")


def _spawn(log: Path) -> subprocess.Popen[bytes]:
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen([sys.executable, "-m", "moat.run.supervisor"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log_fd, start_new_session=True, close_fds=True,
                                cwd="/")
    finally:
        os.close(log_fd)


def _send(supervisor: subprocess.Popen[bytes], data: bytes, run: Run, last: bool = False) -> None:
    """Write to the supervisor; a supervisor that has died is an ``EngineError`` with its last words."""
    assert supervisor.stdin is not None
    try:
        supervisor.stdin.write(data)
        if last:
            supervisor.stdin.close()
        else:
            supervisor.stdin.flush()
    except OSError:
        raise _failed(run, "ended before it took the run over") from None


def _wait_for(supervisor: subprocess.Popen[bytes]) -> None:
    # Still tearing down after that: it owns the run, and `moat list` shows it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        supervisor.wait(HANDOFF_TIMEOUT)


def _expect(supervisor: subprocess.Popen[bytes], word: str, run: Run) -> None:
    """Wait for the supervisor's next word; cancels (before the commit) raise ``Interrupted``."""
    assert supervisor.stdout is not None
    deadline = time.monotonic() + HANDOFF_TIMEOUT
    while time.monotonic() < deadline:
        if run.signals.phase == HANDING_OFF:
            run.signals.checkpoint()
        ready, _, _ = select.select([supervisor.stdout], [], [], POLL)
        if not ready:
            continue
        line = supervisor.stdout.readline().decode(errors="replace").strip()
        if line == word:
            return
        break  # EOF, or a word we did not expect: the supervisor failed
    raise _failed(run, "could not take the run over")


def _failed(run: Run, what: str) -> EngineError:
    return EngineError(f"the background supervisor {what}:\n" + _log_tail(run),
                       hint=f"Its log is {run.record.dir / SUPERVISOR_LOG}.")


def _log_tail(run: Run) -> str:
    try:
        text = (run.record.dir / SUPERVISOR_LOG).read_text(errors="replace")
    except OSError:
        return "    (no log)"
    lines = text.strip().splitlines()[-10:] or ["(empty log)"]
    return "\n".join(f"    {run.masker.text(line)}" for line in lines)


def _dismiss(supervisor: subprocess.Popen[bytes]) -> None:
    """Before the commit: close its stdin (it leaves at once, touching nothing); kill it if it lingers."""
    try:
        if supervisor.stdin is not None:
            supervisor.stdin.close()
    except OSError:
        pass
    try:
        supervisor.wait(5)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        supervisor.wait()


def _reap_after(run: Run, supervisor: subprocess.Popen[bytes]) -> None:
    """The supervisor owned the run and failed before the agent started: if it is gone, its run is
    an orphan, and is reaped now rather than at the next `moat run`."""
    try:
        supervisor.wait(30)
    except subprocess.TimeoutExpired:
        supervisor.send_signal(signal.SIGTERM)  # it tears down itself
        return
    from moat.run import reaper  # noqa: PLC0415
    from moat.run.registry import Registry  # noqa: PLC0415

    reaper.remove(run.runtime, reaper.find(run.runtime, Registry(run.store), finished=False,
                                           only_run=run.plan.run_id))


__all__ = ["Interrupted", "hand_off"]
