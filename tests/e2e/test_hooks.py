"""moat.yaml's hooks for real: build hooks baked into the agent image (root's, then the agent's
user's), pre_run in the workspace before every command, and a failing pre_run stopping the run with
its output and its exit code. The sandbox runs pre_run and refuses build hooks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import WORKSPACE_UID, run_moat, write_workspace

AGENT_UID = WORKSPACE_UID if os.getuid() == 0 else os.getuid()

HOOKS = """\
hooks:
  post_build_root: |
    echo "root-hook as $(id -u)" > /etc/moat-hook-root &&
    echo "second line" >> /etc/moat-hook-root
  post_build: echo "user-hook as $(id -u)" > "$HOME/moat-hook-user"
  pre_run: |
    echo "pre_run in $(pwd) as $(id -u)"
    echo prepared > pre-run-marker
command: [sh, -c, 'cat /etc/moat-hook-root "$HOME/moat-hook-user" pre-run-marker; echo command-ran']
"""


@pytest.mark.engine
def test_hooks_run_in_order_as_their_users(engine: object, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", HOOKS)
    result = run_moat(["run", str(workspace)])
    assert result.code == 0, result.output
    out = result.stdout
    assert f"pre_run in /workspace as {AGENT_UID}\n" in out
    assert "root-hook as 0\nsecond line\n" in out  # root's layer, both lines
    assert f"user-hook as {AGENT_UID}\n" in out  # the agent's user's layer
    assert out.index("pre_run in") < out.index("root-hook") and out.rstrip().endswith("command-ran")
    marker = workspace / "pre-run-marker"
    assert marker.read_text() == "prepared\n" and marker.stat().st_uid == AGENT_UID  # the workspace owner's
    # The layers are cached: a second run builds nothing and runs pre_run again.
    marker.unlink()
    again = run_moat(["run", str(workspace)])
    assert again.code == 0, again.output
    assert "building agent image" not in again.stderr and marker.is_file()


@pytest.mark.engine
def test_a_failing_pre_run_stops_the_run_with_its_output_and_code(engine: object, moat_home: Path,
                                                                 tmp_path: Path) -> None:
    config = ("hooks:\n  pre_run: |\n    echo about to fail\n    exit 7\n"
              "command: [sh, -c, 'echo command-ran']\n")
    workspace = write_workspace(tmp_path / "ws", config)
    result = run_moat(["run", str(workspace)])
    assert result.code == 7, result.output
    assert "about to fail" in result.stdout and "command-ran" not in result.stdout
    assert "the pre_run hook failed (exit code 7)" in result.output


@pytest.mark.sandbox
def test_the_sandbox_runs_pre_run_and_refuses_build_hooks(sandbox: object, moat_home: Path, tmp_path: Path) -> None:
    config = "hooks:\n  pre_run: echo prepared > pre-run-marker\ncommand: [sh, -c, 'cat pre-run-marker']\n"
    workspace = write_workspace(tmp_path / "ws", config)
    result = run_moat(["run", "--runtime", "sandbox", str(workspace)])
    assert result.code == 0, result.output
    assert "prepared" in result.stdout
    refused = run_moat(["run", "--runtime", "sandbox", str(write_workspace(tmp_path / "ws2", HOOKS))])
    assert refused.code == 2 and "hooks.post_build_root: build hooks are layers" in refused.stderr
    assert "Traceback" not in refused.stderr
