"""The run's signal machine: one per run, acting by phase, never raising inside a handler."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from moat.ownership import process_start, signal_process
from moat.run.signals import AGENT, HANDED_OFF, HANDING_OFF, TEARDOWN, AgentTarget, Interrupted, RunSignals
from tests.unit.fakes import wait_until


def machine() -> tuple[RunSignals, list[str]]:
    notes: list[str] = []
    return RunSignals(on_notice=notes.append), notes


def test_handlers_are_installed_once_and_restored() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    signals, _ = machine()
    signals.install()
    try:
        for signum in before:
            assert signal.getsignal(signum) == signals._handler
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal: recorded, nothing raised here
        wait_until(signals.cancel.is_set)
        assert signals.cancelled_by == signal.SIGTERM
        with pytest.raises(Interrupted) as info:
            signals.checkpoint()
        assert info.value.exit_code == 143
    finally:
        signals.uninstall()
    assert {s: signal.getsignal(s) for s in before} == before


def test_advance_is_atomic_with_a_cancel() -> None:
    signals, _ = machine()
    signals.install()
    try:
        signals.deliver(signal.SIGINT)
        wait_until(signals.cancel.is_set)
        with pytest.raises(Interrupted):
            signals.advance(AGENT, agent=AgentTarget(lambda _s: None, lambda: None))
        assert signals.phase != AGENT  # the agent never became the signals' target
    finally:
        signals.uninstall()


def test_the_agent_phase_forwards_and_escalates() -> None:
    delivered: list[int] = []
    stopped = threading.Event()
    signals, notes = machine()
    signals.install()
    try:
        signals.advance(AGENT, agent=AgentTarget(delivered.append, stopped.set))
        signals.deliver(signal.SIGINT)
        wait_until(lambda: delivered == [signal.SIGINT])
        assert not signals.cancel.is_set() and not stopped.is_set()
        signals.deliver(signal.SIGINT)
        wait_until(stopped.is_set)
        assert any("again" in n for n in notes)
    finally:
        signals.uninstall()


def test_an_agent_ignoring_sigterm_is_stopped_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moat.run.signals.STOP_GRACE", 0.2)
    delivered: list[int] = []
    stopped = threading.Event()
    signals, _ = machine()
    signals.install()
    try:
        signals.advance(AGENT, agent=AgentTarget(delivered.append, stopped.set))
        signals.deliver(signal.SIGTERM)
        wait_until(stopped.is_set)
        assert delivered == [signal.SIGTERM]
    finally:
        signals.uninstall()


def test_teardown_notes_signals_and_gives_up_only_when_the_user_insists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moat.run.signals.INSIST_AFTER", 0.3)
    abandoned = threading.Event()
    notes: list[str] = []
    signals = RunSignals(on_notice=notes.append, on_abandon=abandoned.set)
    signals.install()
    try:
        signals.enter(TEARDOWN)
        for _ in range(5):  # quick signals against an engine that answers are one request
            signals.deliver(signal.SIGINT)
        wait_until(lambda: len(notes) == 5)
        assert not abandoned.is_set() and "still cleaning up" in notes[0]
        time.sleep(0.3)
        signals.deliver(signal.SIGINT)  # still there seconds later: it insists
        wait_until(abandoned.is_set)
    finally:
        signals.uninstall()


def test_insisting_stops_waiting_for_the_engine_in_any_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moat.run.signals.INSIST_AFTER", 0.2)
    signals, notes = machine()
    signals.install()
    try:
        for _ in range(3):
            signals.deliver(signal.SIGINT)
        wait_until(signals.cancel.is_set)
        time.sleep(0.25)
        assert not signals.escape.is_set()
        signals.deliver(signal.SIGINT)
        wait_until(signals.escape.is_set)
        assert any("no longer waiting for the engine" in n for n in notes)
        signals.enter(TEARDOWN)
        assert not signals.escape.is_set() and signals.phase_signals == 0  # counted afresh
    finally:
        signals.uninstall()


def test_the_hand_off_cancels_before_the_commit_and_forwards_after() -> None:
    passed: list[int] = []
    signals, _ = machine()
    signals.install()
    try:
        signals.advance(HANDING_OFF, handoff=passed.append)
        signals.advance(HANDED_OFF, handoff=passed.append)
        signals.deliver(signal.SIGTERM)
        wait_until(lambda: passed == [signal.SIGTERM])
        assert not signals.cancel.is_set()
    finally:
        signals.uninstall()


def test_signal_process_never_signals_a_reused_pid() -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start(child.pid)
        assert not signal_process(child.pid, "not-its-start-time", signal.SIGTERM)
        assert child.poll() is None
        assert signal_process(child.pid, start, signal.SIGTERM)
        assert child.wait(5) == -signal.SIGTERM
        assert not signal_process(child.pid, start, signal.SIGTERM)  # gone
    finally:
        child.kill()
        child.wait()


def test_a_zombie_owner_is_not_alive() -> None:
    # A killed supervisor whose parent does not reap it (pid 1 in some containers) is dead all the same.
    import socket
    import subprocess

    from moat.ownership import process_alive

    child = subprocess.Popen(["sleep", "30"])
    start = process_start(child.pid)
    assert process_alive(child.pid, socket.gethostname(), start)
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    assert not process_alive(child.pid, socket.gethostname(), start)  # not reaped yet: a zombie
    child.wait()


def test_a_ctrl_c_swallowed_before_the_run_is_heard_when_its_signals_are_installed() -> None:
    from moat.interrupts import EARLY_SIGINT

    EARLY_SIGINT.set()  # what the entry point's handler leaves, whatever became of its exception
    signals, _ = machine()
    try:
        signals.install()
        wait_until(signals.cancel.is_set)
        with pytest.raises(Interrupted) as info:
            signals.checkpoint()
        assert info.value.exit_code == 130
    finally:
        signals.uninstall()
        EARLY_SIGINT.clear()
