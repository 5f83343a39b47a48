"""Detached runs: ``moat run -d`` hands a prepared run to a supervisor process and returns.

The foreground moat prepares everything (services ready and provisioned, agent container created),
then starts ``python -m moat.run.detach`` in a new session and passes it the run's state through a
pipe (secrets never touch the disk). The supervisor takes the host-cache locks, attaches to the
agent, starts it, says ``started``, and from then on owns the run: it records the agent's output
and exit, and tears the services and network down when the agent ends, with or without any
terminal. ``moat stop`` sends it SIGTERM.
"""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import time
from typing import Any

from moat.errors import EngineError, MoatError
from moat.run.lifecycle import Options, RunExecution
from moat.run.report import PlainReporter
from moat.run.store import RunStore
from moat.runtime import select as runtimes

STARTED = "started"
HANDOFF_TIMEOUT = 120.0  # seconds for the supervisor to take over before the run is given up
SUPERVISOR_LOG = "supervisor.log"


def hand_off(execution: RunExecution) -> None:
    """Create the agent, start the supervisor, and return once it reports the agent started."""
    record = execution.record_()
    # A runtime that holds a started agent hands it over started; otherwise the supervisor creates it
    # (so the agent's environment never has to leave the supervisor's memory).
    agent = execution.create_agent() if execution.runtime.can_hold else None
    state = {
        "plan": execution.plan,
        "options": execution.options,
        "home": execution.store.home,
        "services": dict(execution.created.services),
        "agent": agent,
        "agent_held": execution.agent_held,
        "network": execution.created.network,
        "timings": dict(execution.timings),
        "elapsed": time.monotonic() - execution.started,
    }
    log_fd = os.open(record.dir / SUPERVISOR_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "moat.run.detach"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_fd,
            start_new_session=True, close_fds=True, cwd="/",
        )
    finally:
        os.close(log_fd)
    assert supervisor.stdin is not None and supervisor.stdout is not None
    try:
        supervisor.stdin.write(pickle.dumps(state))
        supervisor.stdin.close()
        ready, _, _ = select.select([supervisor.stdout], [], [], HANDOFF_TIMEOUT)
        answer = supervisor.stdout.readline().decode(errors="replace").strip() if ready else ""
    except BaseException:
        # Interrupted (or broken) before the supervisor took over: it must not outlive us, since the
        # teardown that follows is ours.
        supervisor.kill()
        supervisor.wait()
        raise
    if answer != STARTED:
        supervisor.kill()
        supervisor.wait()
        log = (record.dir / SUPERVISOR_LOG).read_text(errors="replace").strip().splitlines()[-10:]
        raise EngineError(
            "the background supervisor could not start the agent:\n" + "\n".join(f"    {line}" for line in log),
            hint=f"Its log is {record.dir / SUPERVISOR_LOG}.",
        )
    execution.report.info(f"run {execution.plan.name} ({execution.plan.run_id}) is running in the background")


def _adopt(state: dict[str, Any]) -> RunExecution:
    store = RunStore(state["home"])
    options: Options = state["options"]
    plan = state["plan"]
    runtime = runtimes.make(plan.runtime, store.home, plan.image.uid, plan.image.gid)
    execution = RunExecution(plan, runtime, store, PlainReporter(sys.stderr), options)
    execution.record = store.open(execution.plan.run_id, execution.masker)
    execution.created.services.update(state["services"])
    execution.created.agent = state["agent"]
    execution.agent_held = state["agent_held"]
    execution.created.network = state["network"]
    execution.timings.update(state["timings"])
    execution.started = time.monotonic() - state["elapsed"]
    return execution


def supervise() -> int:
    state = pickle.load(sys.stdin.buffer)  # noqa: S301 — written by our own parent process
    ack = sys.stdout

    def acknowledge() -> None:
        ack.write(f"{STARTED}\n")
        ack.flush()
        ack.close()  # the parent stops listening; nothing else may go there

    execution = _adopt(state)
    try:
        return execution.supervise(acknowledge)
    except MoatError as exc:
        sys.stderr.write(f"moat supervisor: {exc.render()}\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(supervise())
