"""Waiting until a service really answers.

The check that decides is the catalog's authenticated probe, run inside the sidecar. Running it is
not free (each exec spawns processes in a container that is busy starting), so a cheap TCP connect
from the host, where the host can reach the run network, tells us the moment the port opens and
triggers a probe at once. Without that gate, probes run at an adaptive interval from tens of
milliseconds up to a few hundred.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from moat.errors import MoatError
from moat.plan.model import Masker, ServiceSpec
from moat.runtime.base import ContainerNotRunning, ExecResult, Runtime

FIRST_INTERVAL = 0.025
MAX_INTERVAL = 0.4
GROWTH = 1.5
GATE_INTERVAL = 0.01  # a TCP connect attempt costs microseconds
STATE_INTERVAL = 0.5  # while a trusted gate sees the port shut: is the container still running?
LOG_LINES = 20


class ReadinessError(MoatError):
    """A service did not become ready (it exited, or its timeout passed)."""


class Aborted(Exception):
    """Another part of the run failed; stop waiting."""


@dataclass(frozen=True)
class Ready:
    seconds: float
    probes: int


class _PortGate:
    """A TCP connect from the host: tells when the port opens, and whether the host sees it at all."""

    def __init__(self, address: str, port: int) -> None:
        self.target = (address, port)
        self.open = False
        self.trusted = True  # refusals so far: the host reaches the container and the port is shut

    def check(self) -> bool:
        if not self.open:
            try:
                with socket.create_connection(self.target, timeout=0.05):
                    self.open = True
            except ConnectionRefusedError:
                pass
            except OSError:
                self.trusted = False  # timeouts or no route: the host's view cannot be relied on
        return self.open


def wait_ready(runtime: Runtime, container_id: str, spec: ServiceSpec, network: str, abort: threading.Event,
               masker: Masker, clock: Callable[[], float] = time.monotonic) -> Ready:
    start = clock()
    deadline = start + spec.ready_timeout
    address = runtime.container_address(container_id, network)
    gate = _PortGate(address, spec.port) if address else None
    interval = FIRST_INTERVAL
    # The first check runs at once (it also finds an image that lacks the probe's program). After
    # that, with a gate the host can trust, no exec runs until the port opens: the probe connects
    # to that same port, so it cannot succeed before, and each exec costs CPU a starting service needs.
    next_probe = start
    next_state = start + STATE_INTERVAL
    probes = 0
    last: ExecResult | None = None
    while True:
        if abort.is_set():
            raise Aborted
        now = clock()
        gate_opened = gate is not None and not gate.open and gate.check()
        if now >= next_probe or gate_opened:
            probes += 1
            try:
                last = runtime.exec(container_id, spec.probe.command, spec.probe.env)
            except ContainerNotRunning:
                raise _exited(runtime, container_id, spec, clock() - start, last, masker) from None
            if _passed(last, spec.probe.expect):
                return Ready(clock() - start, probes)
            if _probe_missing(last):
                raise _cannot_check(spec, last, masker)
            if gate is not None and gate.trusted and not gate.open:
                next_probe = math.inf  # until the gate opens
            else:
                next_probe = clock() + interval
                interval = min(interval * GROWTH, MAX_INTERVAL)
        elif gate is not None and now >= next_state:
            # An exec would notice a container that exited; without execs, its state must be asked.
            next_state = now + STATE_INTERVAL
            if not runtime.state(container_id).running:
                raise _exited(runtime, container_id, spec, clock() - start, last, masker)
        now = clock()
        if now >= deadline:
            if last is None:  # the port never opened: one check, so the report can show what it says
                with contextlib.suppress(MoatError):
                    last = runtime.exec(container_id, spec.probe.command, spec.probe.env)
            raise _timed_out(runtime, container_id, spec, now - start, last, masker)
        if gate is not None and not gate.trusted and next_probe - now > interval:
            next_probe = now + interval  # the gate cannot see the port from here: plain adaptive probing
        pause = next_probe - now
        if gate is not None and not gate.open:
            pause = min(pause, GATE_INTERVAL)
        abort.wait(max(0.0, min(pause, deadline - now)))


def _passed(result: ExecResult, expect: str | None) -> bool:
    return result.exit_code == 0 and (expect is None or expect in result.output)


def _probe_missing(result: ExecResult) -> bool:
    """The image lacks the probe's program (an image override that is not the official image)."""
    return result.exit_code in (126, 127) and "executable file not found" in result.output


def _cannot_check(spec: ServiceSpec, last: ExecResult, masker: Masker) -> ReadinessError:
    program = spec.probe.command[0]
    return ReadinessError(
        f"cannot tell when {spec.name} is ready: its image {spec.image} has no `{program}`, which the"
        f" readiness check runs\n{_describe_probe(spec, last, masker)}",
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
