"""Readiness strategies (exec probe, port gate, state watch) against a fake clock and a fake runtime."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from moat.masking import Masker
from moat.plan.model import ServiceSpec
from moat.runtime.base import ExecResult, ProgramNotFound
from moat.services.readiness import (
    FIRST_INTERVAL,
    GATE_INTERVAL,
    GATED_INTERVAL,
    MAX_INTERVAL,
    STATE_INTERVAL,
    Aborted,
    ReadinessError,
    wait_ready,
)
from tests.unit.fakes import FakeRuntime
from tests.unit.support import plan_for, service


class Clock:
    """Time that passes only when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 1e-6)


def redis_spec(tmp_path: Path, timeout: float = 5.0) -> ServiceSpec:
    # The sandbox's plan: its services are on the run's network, not joined to a pod's holder (the
    # checks are the same either way).
    plan = plan_for(f"dependencies: [redis]\nservices:\n  redis:\n    ready_timeout: {timeout}\n", home=tmp_path,
                    runtime="sandbox")
    return service(plan, "redis")


def started(runtime: FakeRuntime, spec: ServiceSpec) -> str:
    container_id = runtime.create_container(spec.container, {})
    runtime.start_container(container_id)
    return container_id


class Port:
    """A port on a fake address: shut (refused) until ``opens_at``; or unreachable."""

    def __init__(self, clock: Clock, opens_at: float, reachable: bool = True) -> None:
        self.clock, self.opens_at, self.reachable = clock, opens_at, reachable
        self.attempts = 0

    def __call__(self, target: tuple[str, int], timeout: float) -> object:
        self.attempts += 1
        if not self.reachable:
            raise TimeoutError("no route")
        if self.clock() < self.opens_at:
            raise ConnectionRefusedError
        return object()


def gated(runtime: FakeRuntime) -> None:
    runtime.container_address = lambda _cid, _net: "10.0.0.2"  # type: ignore[method-assign]


def run(runtime: FakeRuntime, spec: ServiceSpec, clock: Clock, connect: Callable[..., object] | None = None,
        abort: threading.Event | None = None):  # type: ignore[no-untyped-def]
    container_id = started(runtime, spec)
    kwargs = {"connect": connect} if connect else {}
    return wait_ready(runtime, container_id, spec, "net", abort or threading.Event(), Masker(), clock=clock,
                      sleep=clock.sleep, **kwargs)


def probes(runtime: FakeRuntime) -> int:
    return sum(1 for op, _ in runtime.calls if op == "exec")


def test_ready_at_once_takes_one_probe(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    ready = run(runtime, redis_spec(tmp_path), clock)
    assert ready.probes == 1 and ready.seconds == 0


def test_without_a_gate_probes_back_off_to_the_maximum(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    runtime.probe_results["redis"] = [ExecResult(1, "LOADING")] * 30 + [ExecResult(0, "PONG")]
    ready = run(runtime, redis_spec(tmp_path, timeout=60), clock)
    assert ready.probes == 31
    gaps = [s for s in clock.sleeps if s > 0]
    assert gaps[0] == pytest.approx(FIRST_INTERVAL)
    assert max(gaps) <= MAX_INTERVAL + 1e-9
    assert pytest.approx(MAX_INTERVAL) in gaps


def test_a_trusted_gate_means_no_probe_until_the_port_opens(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    gated(runtime)
    runtime.probe_results["redis"] = [ExecResult(1, "Connection refused"), ExecResult(0, "PONG")]
    port = Port(clock, opens_at=clock.now + 0.8)
    ready = run(runtime, redis_spec(tmp_path), clock, connect=port)
    assert ready.probes == 2  # once at the start, once when the port opened
    assert 0.8 <= ready.seconds <= 0.8 + GATE_INTERVAL + 1e-6  # the probe ran the moment it opened


def test_a_service_the_gate_cannot_see_is_still_found_ready(tmp_path: Path) -> None:
    # In a pod a service may listen on loopback alone: the gate at the holder's address is refused
    # throughout, yet the probe inside passes (review: the run waited for its timeout).
    runtime, clock = FakeRuntime(), Clock()
    gated(runtime)
    runtime.probe_results["redis"] = [ExecResult(1, "Connection refused")] * 2 + [ExecResult(0, "PONG")]
    port = Port(clock, opens_at=math.inf)
    ready = run(runtime, redis_spec(tmp_path), clock, connect=port)
    assert ready.probes == 3 and ready.seconds == pytest.approx(2 * GATED_INTERVAL, abs=GATE_INTERVAL)
    assert port.attempts >= 2.0 / GATE_INTERVAL - 1


def test_an_unreachable_gate_falls_back_to_adaptive_probes(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    gated(runtime)
    runtime.probe_results["redis"] = [ExecResult(1, "no")] * 5 + [ExecResult(0, "PONG")]
    port = Port(clock, opens_at=0, reachable=False)
    ready = run(runtime, redis_spec(tmp_path), clock, connect=port)
    assert ready.probes == 6 and port.attempts == 1  # the gate gave up after its first failure


def test_a_container_that_exits_fails_the_wait_at_once_with_its_logs(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    gated(runtime)
    spec = redis_spec(tmp_path, timeout=60)
    runtime.on_create = lambda c: setattr(c, "log", "FATAL: bad option\n")
    runtime.probe_results["redis"] = [ExecResult(1, "Connection refused")]
    port = Port(clock, opens_at=10_000)

    def die_later(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > 1001.2:
            for container in runtime.containers.values():
                runtime._exit(container, 1)

    container_id = started(runtime, spec)
    with pytest.raises(ReadinessError) as info:
        wait_ready(runtime, container_id, spec, "net", threading.Event(), Masker(), clock=clock, sleep=die_later,
                   connect=port)
    message = info.value.message
    assert "redis exited with code 1 after 1." in message and "FATAL: bad option" in message
    assert clock.now < 1001.2 + STATE_INTERVAL + 0.1  # not at the 60 s deadline


def test_the_timeout_names_the_probe_its_output_and_the_log_masked(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    spec = redis_spec(tmp_path, timeout=1.5)
    password = spec.env["REDIS_PASSWORD"]
    runtime.probe_results["redis"] = [ExecResult(1, f"NOAUTH wrong password {password}")]
    runtime.on_create = lambda c: setattr(c, "log", f"started with {password}\n")
    with pytest.raises(ReadinessError) as info:
        container_id = started(runtime, spec)
        wait_ready(runtime, container_id, spec, "net", threading.Event(), Masker({password}), clock=clock,
                   sleep=clock.sleep)
    text = info.value.render()
    assert "not ready after 1.5s (ready_timeout 1.5s" in text and "last check: redis-cli" in text
    assert "NOAUTH wrong password ****" in text and "started with ****" in text
    assert password not in text


def test_an_image_without_the_probe_program_fails_at_once(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    runtime.fault("exec", ProgramNotFound("redis-cli", "executable file not found in $PATH"))
    with pytest.raises(ReadinessError, match="has no `redis-cli`") as info:
        run(runtime, redis_spec(tmp_path, timeout=60), clock)
    assert "services.redis.wait: false" in (info.value.hint or "")
    assert clock.now == 1000.0


def test_abort_stops_the_wait(tmp_path: Path) -> None:
    runtime, clock = FakeRuntime(), Clock()
    runtime.probe_results["redis"] = [ExecResult(1, "no")]
    abort = threading.Event()
    spec = redis_spec(tmp_path, timeout=60)
    container_id = started(runtime, spec)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > 1002:
            abort.set()

    with pytest.raises(Aborted):
        wait_ready(runtime, container_id, spec, "net", abort, Masker(), clock=clock, sleep=sleep)
    assert clock.now < 1003


def test_a_pods_service_is_watched_at_its_holders_address(tmp_path: Path) -> None:
    # A service joined to a pod's holder has no address of its own: the gate watches the holder's.
    runtime, clock = FakeRuntime(), Clock()
    asked: list[str] = []
    runtime.container_address = lambda cid, _net: asked.append(cid) or ("10.0.0.9" if cid == "holder-1" else None)  # type: ignore[method-assign]
    runtime.probe_results["redis"] = [ExecResult(1, "Connection refused"), ExecResult(0, "PONG")]
    port = Port(clock, opens_at=clock.now + 1.0)
    spec = redis_spec(tmp_path)
    ready = wait_ready(runtime, started(runtime, spec), spec, "net", threading.Event(), Masker(), clock=clock,
                       sleep=clock.sleep, connect=port, address_of="holder-1")
    assert asked == ["holder-1"] and ready.probes == 2 and port.attempts >= 1 / GATE_INTERVAL - 1
