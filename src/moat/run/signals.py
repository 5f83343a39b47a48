"""One signal state machine per run, installed once, from before the first resource to after the last
cleanup: there is no moment with default handlers.

SIGINT, SIGTERM, SIGHUP and SIGQUIT mean, by phase:

- ``starting`` (image, services, provisioning): cancel. The run stops at its next safe point and
  tears down; the exit code is 128 + the signal.
- ``handing-off`` (``run -d`` passing the run to its supervisor): cancel, before the commit;
  ``handed-off``: after it, passed on to the supervisor, which owns the run from then on.
- ``agent``: forwarded to the agent (as ``docker run`` does); a second one, or the agent ignoring a
  SIGTERM/SIGHUP for ``STOP_GRACE`` seconds, stops it. (An interactive agent has a terminal of its
  own, relayed by moat in raw mode: the Ctrl-C typed there is its own, never a signal to moat.)
- ``teardown``: noted and reported; the cleanup finishes.

In every phase, a user who insists (a third signal, seconds into the phase: an engine that stopped
answering) makes moat stop waiting (``escape``): the run goes on to its teardown, and a teardown
given up on leaves the rest to `moat clean`.

Handlers only record the signal; a dispatcher thread acts on it, so no engine call or exception
ever starts inside a signal handler, in the middle of whatever the main thread was doing.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from moat.interrupts import EARLY_SIGINT

# SIGQUIT (Ctrl-\\) too: its default action would end moat with nothing torn down.
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STOP_GRACE = 10.0  # seconds an agent may take to honour a forwarded SIGTERM/SIGHUP before it is stopped
# A user who insists (this many signals in one phase) stops moat waiting for the engine: in a phase
# of the run, it goes on to teardown; in teardown, it leaves (`moat clean` finishes). Only after
# INSIST_AFTER seconds in the phase: ten quick Ctrl-Cs against an engine that answers are one request.
ABANDON_AFTER = 3
INSIST_AFTER = 3.0

STARTING = "starting"
HANDING_OFF = "handing-off"  # before the supervisor's commit: a signal cancels the hand-off
HANDED_OFF = "handed-off"  # after it: signals are passed on to the supervisor
AGENT = "agent"
TEARDOWN = "teardown"
DONE = "done"  # the run is over, moat is about to exit (printing a detached run's id): ignored


class Interrupted(BaseException):
    """The run was asked to stop by a signal (raised at a safe point, never in a handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class AgentTarget:
    """How the agent phase receives signals: deliver one, stop the agent (SIGTERM, a grace, SIGKILL),
    or kill it (it already had its SIGTERM)."""

    deliver: Callable[[int], None]
    stop: Callable[[], None]
    kill: Callable[[], None] | None = None


@dataclass
class RunSignals:
    """Install with ``install()`` (main thread), move through phases, ``uninstall()`` at the very end."""

    on_notice: Callable[[str], None] = lambda _message: None
    # Teardown is stuck (an engine that does not answer) and the user insists: leave now.
    on_abandon: Callable[[], None] = lambda: None
    phase: str = STARTING
    phase_signals: int = 0  # signals received in the current phase
    phase_started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    escape: threading.Event = field(default_factory=threading.Event)  # stop waiting for the engine
    # A signal in teardown: what is optional there (making warm templates) stops at once.
    teardown_signalled: threading.Event = field(default_factory=threading.Event)
    cancelled_by: int | None = None
    forwarded: list[int] = field(default_factory=list)
    _queue: queue.SimpleQueue[int | None] = field(default_factory=queue.SimpleQueue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _agent: AgentTarget | None = None
    _handoff: Callable[[int], None] | None = None
    _previous: dict[int, Any] = field(default_factory=dict)
    _dispatcher: threading.Thread | None = None
    _stop_timer: threading.Timer | None = None

    # --- installation ----------------------------------------------------------------------------

    def install(self) -> RunSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handler)
        self._dispatcher = threading.Thread(target=self._dispatch, name="signals", daemon=True)
        self._dispatcher.start()
        if EARLY_SIGINT.is_set():  # a Ctrl-C before now whose exception was swallowed: heard now
            self.deliver(signal.SIGINT)
        return self

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._queue.put(None)
        if self._stop_timer is not None:
            self._stop_timer.cancel()

    def ignore_from_now(self) -> None:
        """The run is over and moat is leaving: signals are ignored from here to the process's very end
        (Python resets its own handlers to the default as it shuts down: a late Ctrl-C would kill the
        process with a signal's status instead of moat's exit code)."""
        self.enter(DONE)
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                signal.signal(signum, signal.SIG_IGN)

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        # SimpleQueue.put is reentrant: safe in a handler, whatever the main thread was doing.
        self._queue.put(signum)

    def deliver(self, signum: int) -> None:
        """Act on a signal as if it had arrived (for tests, and for signals relayed by a parent)."""
        self._queue.put(signum)

    # --- phases ----------------------------------------------------------------------------------

    def enter(self, phase: str, *, agent: AgentTarget | None = None,
              handoff: Callable[[int], None] | None = None) -> None:
        with self._lock:
            self._set_phase(phase, agent, handoff)
            if phase != AGENT and self._stop_timer is not None:
                self._stop_timer.cancel()
                self._stop_timer = None

    def _set_phase(self, phase: str, agent: AgentTarget | None, handoff: Callable[[int], None] | None) -> None:
        if phase != self.phase:
            self.phase_signals = 0
            self.phase_started = time.monotonic()
            self.escape.clear()
        self.phase = phase
        self._agent = agent
        self._handoff = handoff

    def advance(self, phase: str, *, agent: AgentTarget | None = None,
                handoff: Callable[[int], None] | None = None) -> None:
        """Enter ``phase`` unless the run was cancelled first: then raise ``Interrupted``. Atomic with
        respect to signals: one that arrives before belongs to the old phase, after to the new."""
        with self._lock:
            if self.cancel.is_set() and self.cancelled_by is not None:
                raise Interrupted(self.cancelled_by)
            self._set_phase(phase, agent, handoff)

    def checkpoint(self) -> None:
        """A safe point: raise ``Interrupted`` if the run was cancelled."""
        if self.cancel.is_set() and self.cancelled_by is not None:
            raise Interrupted(self.cancelled_by)

    # --- acting on signals -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            signum = self._queue.get()
            if signum is None:
                return
            try:
                self._act(signum)
            except Exception as exc:  # a failed forward must not end signal handling
                self.on_notice(f"could not pass {signal.Signals(signum).name} on: {exc}")

    def _act(self, signum: int) -> None:
        with self._lock:
            phase, agent, handoff = self.phase, self._agent, self._handoff
            if phase in (STARTING, HANDING_OFF):
                # Under the lock: whoever moves the run to its next phase sees the cancel first.
                if self.cancelled_by is None:
                    self.cancelled_by = signum
                self.cancel.set()
            self.phase_signals += 1
            insisting = (self.phase_signals >= ABANDON_AFTER
                         and time.monotonic() - self.phase_started >= INSIST_AFTER)
        if phase == DONE:
            return
        if insisting and not self.escape.is_set():
            self.escape.set()
            if phase == TEARDOWN:
                self.on_abandon()
            else:
                self.on_notice(f"{signal.Signals(signum).name} again: no longer waiting for the engine;"
                               " tearing down")
            return
        if phase == TEARDOWN:
            self.teardown_signalled.set()
            self.on_notice("still cleaning up; moat exits when everything the run started is removed"
                           " (insist with Ctrl-C to give up waiting)")
            return
        if phase == AGENT and agent is not None:
            self._to_agent(signum, agent)
            return
        if phase == HANDED_OFF and handoff is not None:
            handoff(signum)

    def _to_agent(self, signum: int, agent: AgentTarget) -> None:
        first = not self.forwarded
        self.forwarded.append(signum)
        if not first and signum != signal.SIGQUIT:
            self.on_notice(f"{signal.Signals(signum).name} again: stopping the agent")
            self._in_background(agent.stop, "stop the agent")
            return
        # Engine calls run in threads of their own: an engine that stopped answering must not stop
        # this thread from hearing the next signal.
        self._in_background(lambda: agent.deliver(signum), f"pass {signal.Signals(signum).name} on")
        if signum in (signal.SIGTERM, signal.SIGHUP):
            # Asked to end (moat stop, a closed terminal): an agent that ignores it is stopped.
            timer = threading.Timer(STOP_GRACE, agent.kill or agent.stop)
            timer.daemon = True
            with self._lock:
                self._stop_timer = timer
            timer.start()


    def _in_background(self, action: Callable[[], None], what: str) -> None:
        def run() -> None:
            try:
                action()
            except Exception as exc:  # said, never raised: signal handling goes on
                self.on_notice(f"could not {what}: {getattr(exc, 'message', exc)}")

        threading.Thread(target=run, name="signal-action", daemon=True).start()
