"""moat.yaml's hooks in the plan: image layers in the Go tool's order and users, the pre_run wrapper
around every command, and the sandbox refusing what it cannot build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from moat.errors import ConfigError
from moat.plan.containers import HOLD_WRAPPER
from moat.plan.hooks import PRE_RUN_VARIABLE, build_command, with_pre_run
from tests.unit.support import plan_for

HOOKS = """\
dependencies: [git]
hooks:
  post_build_root: |
    apt-get update -qq &&
    apt-get install -y -qq figlet;
    # a comment line is not a command

    echo done \\
  post_build: git config --global pull.rebase true
  pre_run: npm install
"""


def test_block_lines_are_joined_with_and_their_own_trailing_operators_dropped() -> None:
    assert build_command("a &&\nb;\n\n  # no\nc \\\nd ; &&") == "a && b && c && d"
    assert build_command("one line") == "one line"
    assert build_command("\n  \n# only a comment\n") == ""


def test_build_hooks_are_layers_after_the_dependencies_root_then_the_agents_user() -> None:
    plan = plan_for(HOOKS)
    lines = plan.image.dockerfile.splitlines()
    root = lines.index("RUN apt-get update -qq && apt-get install -y -qq figlet && echo done")
    user_line = lines.index("RUN git config --global pull.rebase true")
    uid, gid = plan.identity.uid, plan.identity.gid
    assert lines[root - 1] == "USER 0:0" and lines[root + 1] == f"USER {uid}:{gid}" and user_line == root + 2
    assert lines.index(f"USER {uid}:{gid}") < root  # the agent's user exists before its hook runs
    assert any(line.startswith("RUN apt-get update") for line in lines[:root])  # the dependencies first
    # A hook is part of the image: changing it changes the tag.
    other = plan_for(HOOKS.replace("pull.rebase true", "pull.rebase false"))
    assert other.image.tag != plan.image.tag


def test_pre_run_wraps_every_command_and_holds_the_hooks_text_in_the_environment() -> None:
    plan = plan_for(HOOKS, command=("make", "test"))
    assert plan.agent.env[PRE_RUN_VARIABLE] == "npm install"
    assert plan.agent.command == (*HOLD_WRAPPER, *with_pre_run(("make", "test")))
    assert plan.command == ("make", "test")  # what the user asked for, as recorded
    no_hook = plan_for("dependencies: [git]\n", command=("make", "test"))
    assert PRE_RUN_VARIABLE not in no_hook.agent.env and no_hook.agent.command[-2:] == ("make", "test")


def test_the_sandbox_refuses_build_hooks_with_their_line_and_runs_pre_run() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_for(HOOKS, runtime="sandbox")
    rendered = caught.value.render()
    assert "moat.yaml:3:3: hooks.post_build_root: build hooks are layers" in rendered and "hooks.pre_run" in rendered
    plan = plan_for("hooks:\n  pre_run: echo hi\n", runtime="sandbox", command=("true",))
    assert plan.agent.command == with_pre_run(("true",))


@pytest.mark.parametrize(("hook", "code", "ran"), [("echo prepared", 0, True), ("echo broken >&2; exit 3", 3, False),
                                                   ("false", 1, False)])
def test_the_wrapper_runs_the_hook_then_the_command_or_stops_with_its_code(tmp_path: Path, hook: str, code: int,
                                                                           ran: bool) -> None:
    marker = tmp_path / "command-ran"
    done = subprocess.run(with_pre_run(("touch", str(marker))), env={"PATH": "/usr/bin:/bin", PRE_RUN_VARIABLE: hook},
                          capture_output=True, text=True, check=False)
    assert done.returncode == code and marker.exists() is ran
    if not ran:
        assert "the pre_run hook failed (exit code" in done.stderr and "hooks.pre_run" in done.stderr
    else:
        assert done.stdout == "prepared\n"
