"""Phase 2 of a run: the agent's turn, from its go line to its exit code.

The agent's exit is learned from the engine (``wait``), not from the end of its output stream: a
stream that never ends (an engine that keeps an attach open) cannot hang the run. Its output is
relayed live and recorded by a reader thread, given a moment to drain once the agent has exited.
Signals reach the agent through the run's signal machine (forwarded, then a stop if repeated).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from moat.errors import EngineError
from moat.files import now_iso
from moat.masking import Masker
from moat.plan.containers import ContainerSpec
from moat.plan.model import Plan
from moat.run.events import RunEvents
from moat.run.output import relay
from moat.run.pod import AGENT_STOP_GRACE, AgentState, Pod
from moat.run.registry import parse_time
from moat.run.signals import AGENT, AgentTarget, Interrupted, RunSignals
from moat.run.startup import still_waiting
from moat.run.timeline import Timeline
from moat.runtime.base import OutputChunk, Runtime

ATTACH_TIMEOUT = 15.0  # seconds for the engine to attach to the agent before its start
DRAIN = 3.0  # seconds the output may trail the agent's exit


@dataclass(frozen=True)
class AgentOutcome:
    exit_code: int
    signals: tuple[int, ...]  # those passed on to the agent while it ran


class AgentRun:
    def __init__(self, plan: Plan, pod: Pod, events: RunEvents, signals: RunSignals, agent_state: AgentState,
                 timeline: Timeline, masker: Masker, spec: ContainerSpec | None = None) -> None:
        """``spec``: the agent's container as start-up completed it (the proxy's address); the plan's
        by default."""
        self.plan = plan
        self.spec = spec or plan.agent
        self.pod = pod
        self.runtime: Runtime = pod.runtime
        self.events = events
        self.signals = signals
        self.agent_state = agent_state
        self.timeline = timeline
        self.masker = masker

    def run(self, held: str | None, *, echo: bool = True, started: Callable[[], None] | None = None) -> AgentOutcome:
        """Let the agent run (``held``: its container, started and waiting) and return how it ended."""
        container_id = held or self._create()
        target = AgentTarget(
            deliver=lambda signum: self.runtime.signal(container_id, signum),
            stop=lambda: self.runtime.stop_container(container_id, AGENT_STOP_GRACE),
            kill=lambda: self.runtime.signal(container_id, signal.SIGKILL),
        )
        self.events.log(f"agent starting: {' '.join(self.plan.command)}")
        if self.plan.interactive:
            code = self._interactive(container_id, target)
        else:
            code = self._piped(container_id, held is not None, target, echo, started)
        self.timeline.mark("agent_exited")
        self.events.log(f"agent exited with code {code}")
        return AgentOutcome(code, tuple(self.signals.forwarded))

    def _create(self) -> str:
        container_id = self.pod.create_container(self.spec)
        self.events.record.update(agent={"container_name": self.spec.name, "container_id": container_id})
        return container_id

    def _went(self, container_id: str) -> None:
        self.agent_state.released.add(container_id)
        self.events.record.update(state="running", started_at=now_iso())
        self.timeline.mark("agent_started")

    def _piped(self, container_id: str, held: bool, target: AgentTarget, echo: bool,
               started: Callable[[], None] | None) -> int:
        if held:
            still_waiting(self.runtime, container_id, self.masker)
        reader = _Reader(lambda: self.runtime.attach(container_id), self.events, self.timeline, echo)
        reader.start()
        if not reader.attached.wait(ATTACH_TIMEOUT):
            still_waiting(self.runtime, container_id, self.masker)
            raise EngineError(f"the engine did not attach to the agent within {ATTACH_TIMEOUT:g}s")
        reader.raise_error()
        if held:  # again, now: an init that failed to fork the moment it started may have ended meanwhile
            still_waiting(self.runtime, container_id, self.masker)
        # From here on, a signal is the agent's: the phase changes atomically, or the run was
        # cancelled just before (then the agent never gets its go line).
        self.signals.advance(AGENT, agent=target)
        self._went(container_id)
        if held:
            self.runtime.release(container_id)
        else:
            self.runtime.start_container(container_id)
        reader.go.set()
        if started is not None:
            started()
        code = _Waiter(lambda: self.runtime.wait(container_id)).result(self.signals.escape, self.signals.forwarded)
        reader.finish(DRAIN)
        reader.raise_error()
        return code

    def _interactive(self, container_id: str, target: AgentTarget) -> int:
        """The terminal belongs to the agent; its log is read from the runtime afterwards."""
        self.events.pause()
        self.signals.advance(AGENT, agent=target)
        self._went(container_id)
        code = _Waiter(lambda: self.runtime.attach_terminal(container_id)).result(self.signals.escape,
                                                                                 self.signals.forwarded)
        try:
            for line in self.runtime.logs(container_id, timestamps=True).splitlines():
                stamp, _, text = line.partition(" ")
                if parse_time(stamp) is None:  # a runtime that keeps the terminal's bytes as they came
                    stamp, text = "", line
                self.events.record.log("tty", text, ts=stamp or None)
        except EngineError as exc:
            self.events.log(f"could not read the agent's terminal log: {exc.message}")
        return code


class _Waiter:
    """``wait`` in its own thread, so the main thread stays free (and interruptible) meanwhile."""

    def __init__(self, wait: Callable[[], int]) -> None:
        self._done = threading.Event()
        self._code = -1
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._code = wait()
            except BaseException as exc:  # handed to the waiting thread
                self._error = exc
            finally:
                self._done.set()

        threading.Thread(target=run, name="agent-wait", daemon=True).start()

    def result(self, escape: threading.Event, signals: list[int]) -> int:
        """The agent's exit code; ``Interrupted`` if the user insists on leaving before the engine
        says it (an engine that stopped answering)."""
        while not self._done.wait(0.2):
            if escape.is_set():
                raise Interrupted(signals[-1] if signals else signal.SIGINT)
        if self._error is not None:
            raise self._error
        return self._code


class _Reader:
    """Attaches, then relays the agent's output to the terminal and the record, in its own thread."""

    def __init__(self, attach: Callable[[], Iterator[OutputChunk]], events: RunEvents, timeline: Timeline,
                 echo: bool) -> None:
        self._attach = attach
        self._events = events
        self._timeline = timeline
        self._echo = echo
        self.attached = threading.Event()
        self.go = threading.Event()  # the agent was started: its output may be read (a sandbox's
        # output exists only once its process does)
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="agent-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            chunks = self._attach()
            self.attached.set()
            self.go.wait()
            def first_line(_at: float) -> None:
                self._timeline.mark("first_output", first=True)

            relay(chunks, self._events.record, first_line, echo=self._echo, secrets=self._events.masker)
        except BaseException as exc:  # handed to the main thread
            self._error = exc
            self.attached.set()
        finally:
            self._done.set()

    def finish(self, drain: float) -> None:
        """Give the output a moment to catch up with the agent's exit; a stream the engine keeps
        open is abandoned (its thread is a daemon)."""
        self._done.wait(drain)

    def raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
