"""The two shell scripts a pod runs, run here with the host's sh: the agent's gate and the strict
egress rules (without iptables on the PATH, so nothing on this machine is touched)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from moat.plan.kube.manifests import COLLECT_WAIT, CONTROL_DIR, EGRESS_RULES, GATE
from moat.run.kube import LOCK_TIMED_OUT, locked_pull


def _gate(control: Path, collect: bool, *command: str) -> subprocess.Popen[bytes]:
    script = (GATE + (COLLECT_WAIT if collect else "") + "exit $code\n").replace(CONTROL_DIR, str(control))
    return subprocess.Popen(["sh", "-c", script, *command])


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 5
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_the_command_waits_for_the_gate_and_its_exit_code_is_kept(tmp_path: Path) -> None:
    process = _gate(tmp_path, False, "sh", "-c", 'printf "%s|" "$@" > "$0.out"; exit 7', str(tmp_path / "cmd"),
                    "a b", "$(id)", "*")
    time.sleep(0.3)
    assert process.poll() is None and not (tmp_path / "cmd.out").exists()  # held at the gate
    (tmp_path / "go").touch()
    assert process.wait(5) == 7
    assert (tmp_path / "cmd.out").read_text() == "a b|$(id)|*|"  # arguments untouched by any shell
    assert (tmp_path / "exit").read_text() == "7\n"


def test_sigterm_reaches_the_command_and_ends_a_collect_wait_at_once(tmp_path: Path) -> None:
    process = _gate(tmp_path, True, "sleep", "30")
    (tmp_path / "go").touch()
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)  # the command ends (143), the wait for moat's collection begins
    _wait_for(tmp_path / "exit")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)  # the pod is being deleted: no need to wait for collection
    assert process.wait(5) == 143
    assert time.monotonic() - started < 2


def test_a_copied_workspace_waits_for_moat_to_collect_it(tmp_path: Path) -> None:
    process = _gate(tmp_path, True, "true")
    (tmp_path / "go").touch()
    _wait_for(tmp_path / "exit")
    time.sleep(0.3)
    assert process.poll() is None
    (tmp_path / "collected").touch()
    assert process.wait(5) == 0


def test_strict_egress_fails_closed_without_iptables(tmp_path: Path) -> None:
    done = subprocess.run(["sh", "-c", EGRESS_RULES], env={**os.environ, "PATH": str(tmp_path)},
                          capture_output=True, text=True, check=False, executable="/bin/sh")
    assert done.returncode != 0 and "iptables is missing" in done.stderr


def _pull(cache: Path, timeout: float, log: Path, pause: str = "0.4") -> subprocess.Popen[bytes]:
    job = f'echo start >> {log}; sleep {pause}; echo end >> {log}'
    return subprocess.Popen(["sh", "-c", locked_pull(str(cache), "ollama-llama3:8b", timeout), "moat-provision",
                             "sh", "-c", job])


def test_one_puller_per_item_across_runs_sharing_the_cache(tmp_path: Path) -> None:
    log = tmp_path / "log"
    first, second = _pull(tmp_path, 30, log), _pull(tmp_path, 30, log)
    assert first.wait(10) == 0 and second.wait(10) == 0
    assert log.read_text().split() == ["start", "end", "start", "end"]  # never two at once
    assert not list((tmp_path / ".moat-locks").iterdir())  # released


def test_a_dead_pullers_lock_is_taken_over_and_a_live_one_times_out(tmp_path: Path) -> None:
    locks = tmp_path / ".moat-locks"
    stale = locks / "ollama-llama3_8b"
    stale.mkdir(parents=True)
    old = time.time() - 600
    os.utime(stale, (old, old))  # ten minutes old: older than a 60 s pull may take
    assert _pull(tmp_path, 60, tmp_path / "log", "0").wait(10) == 0
    stale.mkdir()  # a fresh one: someone is pulling right now
    assert _pull(tmp_path, 1, tmp_path / "log2", "0").wait(10) == LOCK_TIMED_OUT
    assert not (tmp_path / "log2").exists()
