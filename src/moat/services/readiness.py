"""Waiting until a service really answers: small checks, composed, against one deadline.

- ``ExecProbe``: the catalog's authenticated check, run inside the sidecar. It decides. Running it is
  not free (each exec spawns processes in a container that is busy starting), so it runs once at
  once (which also finds an image that lacks its program), then at an adaptive interval — or, where
  a trusted ``PortGate`` watches the port, only when the port opens.
- ``PortGate``: a TCP connect from the host every few milliseconds, where the host can reach the
  run's network. It tells the moment the port opens, and wakes the probe.
- ``StateWatch``: while nothing else would notice, asks whether the container still runs, so a
  sidecar that exits fails the wait at once, not at its deadline.

``wait_ready`` runs whichever check is due, sleeping on the abort event until the next one is: the
clock and the sleep are injected, so every timing rule is tested without waiting.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from moat.errors import MoatError
from moat.masking import Masker
from moat.plan.model import ServiceSpec
from moat.runtime.base import ContainerNotRunning, ExecResult, ProgramNotFound, Runtime

FIRST_INTERVAL = 0.025
MAX_INTERVAL = 0.4
GROWTH = 1.5
GATE_INTERVAL = 0.01  # a TCP connect attempt costs microseconds
GATED_INTERVAL = 1.0  # the probe's pace while a trusted gate sees the port shut
STATE_INTERVAL = 0.5  # how often to ask whether the container still runs
LOG_LINES = 20

Clock = Callable[[], float]


class ReadinessError(MoatError):
    """A service did not become ready (it exited, or its timeout passed)."""


class Aborted(Exception):
    """Another part of the run failed (or it was cancelled); stop waiting."""


class Exited(Exception):
    """The container stopped while we waited."""


class Refused(Exception):
    """The check said it will never pass (its ``refused`` exit code)."""


class CheckRefused(ReadinessError):
    """A check that answered "never" (a warm start whose credentials could not be set)."""


@dataclass(frozen=True)
class Ready:
    seconds: float
    probes: int


class Check(Protocol):
    def due(self) -> float:
        """When it next wants to run (clock time; ``math.inf``: not until woken)."""

    def run(self, now: float) -> bool:
        """Run it; True when the service is ready. Raises ``Exited`` when the container stopped."""


class PortGate:
    """A TCP connect from the host: tells when the port opens, and whether the host sees it at all."""

    def __init__(self, address: str, port: int, on_open: Callable[[], None],
                 connect: Callable[[tuple[str, int], float], object] = socket.create_connection) -> None:
        self.target = (address, port)
        self.open = False
        self.trusted = True  # refusals so far: the host reaches the container and the port is shut
        self._on_open = on_open
        self._connect = connect
        self._next = -math.inf

    def due(self) -> float:
        return math.inf if self.open or not self.trusted else self._next

    def run(self, now: float) -> bool:
        self._next = now + GATE_INTERVAL
        try:
            conn = self._connect(self.target, 0.05)
        except ConnectionRefusedError:
            return False
        except OSError:
            self.trusted = False  # timeouts or no route: the host's view cannot be relied on
            self._on_open()  # the probe must go back to its own schedule
            return False
        close = getattr(conn, "close", None)
        if close is not None:
            close()
        self.open = True
        self._on_open()
        return False


class ExecProbe:
    """The catalog's authenticated check, inside the sidecar."""

    def __init__(self, runtime: Runtime, container_id: str, spec: ServiceSpec, start: float) -> None:
        self.runtime = runtime
        self.container_id = container_id
        self.spec = spec
        self.probes = 0
        self.last: ExecResult | None = None
        self.gated: Callable[[], bool] = lambda: False  # whether a trusted gate sees the port shut
        self._next = start
        self._interval = FIRST_INTERVAL

    def wake(self, now: float) -> None:
        self._next = min(self._next, now)

    def due(self) -> float:
        return self._next

    def run(self, now: float) -> bool:
        self.probes += 1
        try:
            self.last = self.runtime.exec(self.container_id, self.spec.probe.command, self.spec.probe.env)
        except ContainerNotRunning:
            raise Exited from None
        expect = self.spec.probe.expect
        if self.last.exit_code == 0 and (expect is None or expect in self.last.output):
            return True
        if self.spec.probe.refused is not None and self.last.exit_code == self.spec.probe.refused:
            raise Refused
        if self.gated():
            # The probe connects to the port the gate watches: it can hardly succeed before it opens,
            # and each exec costs CPU a starting service needs. Now and then all the same: a service
            # may listen where the gate cannot see it (on loopback alone, in a pod).
            self._next = now + GATED_INTERVAL
        else:
            self._next = now + self._interval
            self._interval = min(self._interval * GROWTH, MAX_INTERVAL)
        return False


class StateWatch:
    """Asks the engine whether the container still runs (where no exec would notice its exit)."""

    def __init__(self, runtime: Runtime, container_id: str, start: float) -> None:
        self.runtime = runtime
        self.container_id = container_id
        self._next = start + STATE_INTERVAL

    def due(self) -> float:
        return self._next

    def run(self, now: float) -> bool:
        self._next = now + STATE_INTERVAL
        if not self.runtime.state(self.container_id).running:
            raise Exited
        return False


def wait_for(checks: Sequence[Check], deadline: float, abort: threading.Event, clock: Clock = time.monotonic,
             sleep: Callable[[float], object] | None = None) -> bool:
    """Run each check when due until one says ready (True) or the deadline passes (False).

    Raises ``Aborted`` when ``abort`` is set, and whatever a check raises.
    """
    pause = sleep or abort.wait
    while True:
        if abort.is_set():
            raise Aborted
        now = clock()
        for check in checks:
            if check.due() <= now and check.run(now):
                return True
        now = clock()
        if now >= deadline:
            return False
        wake = min([deadline, *(check.due() for check in checks)])
        pause(max(0.0, wake - now))


def wait_ready(runtime: Runtime, container_id: str, spec: ServiceSpec, network: str, abort: threading.Event,
               masker: Masker, clock: Clock = time.monotonic, sleep: Callable[[float], object] | None = None,
               connect: Callable[[tuple[str, int], float], object] = socket.create_connection,
               address_of: str | None = None) -> Ready:
    """Wait until ``spec``'s probe passes in ``container_id``; ``ReadinessError`` says why it did not.
    ``address_of``: the container whose address on ``network`` the service has (a pod's holder)."""
    start = clock()
    probe = ExecProbe(runtime, container_id, spec, start)
    checks: list[Check] = [probe]
    address = runtime.container_address(address_of or container_id, network)
    if address:
        gate = PortGate(address, spec.port, lambda: probe.wake(clock()), connect)
        probe.gated = lambda: gate.trusted and not gate.open
        checks += [gate, StateWatch(runtime, container_id, start)]
    else:
        checks.append(StateWatch(runtime, container_id, start))
    try:
        if wait_for(checks, start + spec.ready_timeout, abort, clock, sleep):
            return Ready(clock() - start, probe.probes)
    except ProgramNotFound as missing:
        raise _cannot_check(spec, missing, masker) from None
    except Exited:
        raise _exited(runtime, container_id, spec, clock() - start, probe.last, masker) from None
    except Refused:
        raise CheckRefused(f"{spec.name} answered, and refused its check after {clock() - start:.1f}s\n"
                           f"{_describe_probe(spec, probe.last, masker)}",
                           hint=f"Check services.{spec.name}.env in moat.yaml.") from None
    waited = clock() - start
    if probe.last is None or probe.probes <= 1:
        # The port never opened after the first check: one more, so the report shows what it says now.
        with contextlib.suppress(MoatError, Exited):
            probe.run(clock())
    raise _timed_out(runtime, container_id, spec, waited, probe.last, masker)


def _cannot_check(spec: ServiceSpec, missing: ProgramNotFound, masker: Masker) -> ReadinessError:
    program = spec.probe.command[0]
    return ReadinessError(
        f"cannot tell when {spec.name} is ready: its image {spec.image} has no `{program}`, which the"
        f" readiness check runs\n  ({masker.text(missing.message)})",
        hint=f"Use an image of {spec.name} that provides `{program}` (the official image does) in"
             f" services.{spec.name}.image, or set services.{spec.name}.wait: false.",
    )


def _describe_probe(spec: ServiceSpec, last: ExecResult | None, masker: Masker) -> str:
    command = " ".join(masker.text(a) for a in spec.probe.command)
    if last is None:
        return f"  check: {command} (never completed)"
    output = masker.text(last.output.strip()) or "(no output)"
    lines = output.splitlines()[-5:]
    return f"  last check: {command} → exit {last.exit_code}\n" + "\n".join(f"    {line}" for line in lines)


def _log_tail(runtime: Runtime, container_id: str, masker: Masker) -> str:
    try:
        text = runtime.logs(container_id, tail=LOG_LINES)
    except MoatError as exc:
        return f"  (its logs could not be read: {exc.message})"
    lines = [masker.text(line) for line in text.rstrip().splitlines()[-LOG_LINES:]]
    if not lines:
        return "  its log is empty"
    return f"  its last {len(lines)} log lines:\n" + "\n".join(f"    | {line}" for line in lines)


def _exited(runtime: Runtime, container_id: str, spec: ServiceSpec, waited: float, last: ExecResult | None,
            masker: Masker) -> ReadinessError:
    try:
        state = runtime.state(container_id)
        code = f"exited with code {state.exit_code}" + (" (out of memory)" if state.oom_killed else "")
    except MoatError:
        code = "stopped"
    return ReadinessError(
        f"{spec.name} {code} after {waited:.1f}s, before it was ready ({spec.image})\n"
        f"{_describe_probe(spec, last, masker)}\n{_log_tail(runtime, container_id, masker)}",
        hint=f"Check services.{spec.name}.env and .image in moat.yaml; if it ran out of memory, raise "
             f"services.{spec.name}.memory. Its full log is saved in the run directory.",
    )


def _timed_out(runtime: Runtime, container_id: str, spec: ServiceSpec, waited: float, last: ExecResult | None,
               masker: Masker) -> ReadinessError:
    return ReadinessError(
        f"{spec.name} was not ready after {waited:.1f}s (ready_timeout {spec.ready_timeout:g}s; {spec.image})\n"
        f"{_describe_probe(spec, last, masker)}\n{_log_tail(runtime, container_id, masker)}",
        hint=f"If {spec.name} is just slow to start here, raise services.{spec.name}.ready_timeout; otherwise "
             "its log above says what it is waiting for.",
    )
