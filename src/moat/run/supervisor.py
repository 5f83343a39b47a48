"""The supervisor of a detached run (``python -m moat.run.supervisor``): see ``handoff`` for the protocol.

It adopts the prepared run, says ``ready``, and does nothing more until the foreground commits:
stdin closing before that means the foreground kept the run, and the supervisor leaves without
touching anything. After the commit it owns the run: it starts the agent, records its output and
exit, and tears everything down, with or without a terminal. Its stdout is only for the hand-off
words: once the foreground is gone, writing there fails quietly.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import IO, Any

from moat.errors import MoatError
from moat.ownership import owner_metadata
from moat.run.execution import Outcome, Run
from moat.run.handoff import COMMIT, READY, STARTED, unpack
from moat.run.pod import CONTAINER, NETWORK
from moat.run.report import PlainReporter
from moat.run.signals import HANDLED
from moat.run.store import RunStore
from moat.run.timeline import Timeline
from moat.runtime import select as runtimes


def _say(out: IO[str], word: str) -> None:
    try:
        out.write(f"{word}\n")
        out.flush()
    except OSError:
        pass  # the foreground is gone (killed during the hand-off): the run goes on without it


def adopt(state: dict[str, Any]) -> Run:
    plan = state["plan"]
    store = RunStore(plan.home)
    runtime = runtimes.make(plan.runtime, plan.home, plan.identity)
    run = Run(plan, runtime, store, PlainReporter(sys.stderr), state["options"])
    run.timeline = Timeline(offset=state["elapsed"], marks=state["timeline"])
    run.agent_state.released.update(state["released"])
    record = store.open(plan.run_id, run.masker, on_failure=run.record_failed)
    run.open(record)
    pod = run.pod
    for spec in plan.services:
        if spec.cache_path:
            pod.hold_cache(spec.name, run.signals.cancel)
    run.scope.adopt(state["resources"])
    # Containers made here (a sandbox agent) live inside the adopted network: removed before it.
    # (A pod's holder first: the network holds only the holder.)
    found = run.scope.resources()
    pod.network = next((r for r in found if r.kind == CONTAINER and r.attr("role") == "holder"),
                       next((r for r in found if r.kind == NETWORK), None))
    return run


def supervise(stdin: IO[bytes], stdout: IO[str]) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # A signal that arrives while the run is adopted waits (blocked) for the run's own machine.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    state = unpack(stdin)
    run = adopt(state)
    run.signals.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
    try:
        _say(stdout, READY)
        if stdin.readline().decode(errors="replace").strip() != COMMIT:
            run.holds.release_all()
            return 0  # the foreground kept the run (it was cancelled, or it died): not ours
        run.record.update(**owner_metadata())

        def started() -> None:
            _say(stdout, STARTED)
            with contextlib.suppress(OSError):
                stdout.close()

        def body() -> Outcome:
            run.signals.checkpoint()  # a signal passed on between the commit and now
            return run.run_agent(state["started"], echo=False, on_started=started)

        outcome = run.guarded(body)
        return outcome.exit_code or 0
    except MoatError as exc:
        sys.stderr.write(f"moat supervisor: {run.masker.text(exc.render())}\n")
        return exc.exit_code
    finally:
        run.signals.uninstall()


if __name__ == "__main__":
    sys.exit(supervise(sys.stdin.buffer, sys.stdout))
