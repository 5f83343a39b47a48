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

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from moat.errors import EngineError
from moat.ownership import process_start
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
    record = run._record()
    supervisor: subprocess.Popen[bytes] | None = None
    committed = False

    def on_signal(signum: int) -> None:
        # Only ever called once the run is the supervisor's (the HANDED_OFF phase).
        if supervisor is not None and supervisor.poll() is None:
            supervisor.send_signal(signum)  # a child we started: its pid cannot have been reused

    run.signals.advance(HANDING_OFF)
    log_fd = os.open(record.dir / SUPERVISOR_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "moat.run.supervisor"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_fd,
            start_new_session=True, close_fds=True, cwd="/",
        )
    finally:
        os.close(log_fd)
    assert supervisor.stdin is not None and supervisor.stdout is not None
    try:
        state = {
            "plan": run.plan,
            "options": run.options,
            "resources": run._scope().records(),
            "started": started,
            "released": sorted(run.agent_state.released),
            "timeline": run.timeline.marks(),
            "elapsed": run.timeline.elapsed(),
        }
        supervisor.stdin.write(pack(state))
        supervisor.stdin.flush()
        _expect(supervisor, READY, run)
        # The commit: a signal handled before it cancels the hand-off; one handled after is passed on.
        run.signals.advance(HANDED_OFF, handoff=on_signal)
        committed = run.handed_off = True
        record.update(pid=supervisor.pid, pid_start=process_start(supervisor.pid), detached=True)
        run._scope().hand_over()
        supervisor.stdin.write(f"{COMMIT}\n".encode())
        supervisor.stdin.close()
    except BaseException:
        if not committed:
            # Ours to tear down: the supervisor must go without touching anything.
            _dismiss(supervisor)
        raise
    try:
        _expect(supervisor, STARTED, run)
    except EngineError:
        _reap_after(run, supervisor)
        raise
    run.holds.release_all()  # the supervisor holds its own
    run._events().info(f"run {run.plan.name} ({run.plan.run_id}) is running in the background")


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
    raise EngineError(
        "the background supervisor could not take the run over:\n" + _log_tail(run),
        hint=f"Its log is {run._record().dir / SUPERVISOR_LOG}.",
    )


def _log_tail(run: Run) -> str:
    try:
        text = (run._record().dir / SUPERVISOR_LOG).read_text(errors="replace")
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
