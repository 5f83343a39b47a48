"""The two shell scripts a pod runs, run here with the host's sh: the agent's gate and the strict
egress rules (without iptables on the PATH, so nothing on this machine is touched)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from moat.plan.kube.manifests import COLLECT_WAIT, CONTROL_DIR, EGRESS_RULES, GATE


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
