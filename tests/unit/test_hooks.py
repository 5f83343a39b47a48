"""moat.yaml's hooks in the plan: image layers in the Go tool's order and users, the pre_run wrapper
around every command, and the sandbox refusing what it cannot build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from moat.errors import ConfigError
from moat.plan.containers import HOLD_WRAPPER
from moat.plan.hooks import PRE_RUN_VARIABLE, run_instruction, with_pre_run
from moat.runtime.docker import _failed_hook
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


def _script(instruction: str | None) -> str:
    assert instruction is not None and instruction.startswith("RUN [")
    argv = json.loads(instruction.removeprefix("RUN "))
    assert argv[:2] == ["/bin/sh", "-ec"]
    return str(argv[2])


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-ec", script], cwd=tmp_path, capture_output=True, text=True, check=False)


def test_a_build_hook_is_its_script_exactly_each_failing_line_failing_the_layer(tmp_path: Path) -> None:
    # The Go tool's examples: lines ending in && or ; run one after the other.
    block = "echo one >> log &&\necho two >> log;\n\n  # a comment line\necho three >> log  # and one at the end\n"
    assert _run(_script(run_instruction("post_build", block)), tmp_path).returncode == 0
    assert (tmp_path / "log").read_text() == "one\ntwo\nthree\n"
    # Continued lines and compound commands keep their meaning; a failing line fails the layer.
    assert _run(_script(run_instruction("post_build", "echo a \\\n  b > c\nif true; then\n  echo d >> c\nfi")),
                tmp_path).returncode == 0
    assert (tmp_path / "c").read_text() == "a b\nd\n"
    failing = _run(_script(run_instruction("post_build", "echo before\nfalse\necho after")), tmp_path)
    assert failing.returncode == 1 and failing.stdout == "before\n"
    # A single line exactly as written (find's "\;" kept); only newlines split lines; CRLF read as LF.
    assert _script(run_instruction("post_build", "find . -name x -exec rm {} \\;")) == "find . -name x -exec rm {} \\;"
    assert _script(run_instruction("post_build", "echo 'a\u2028b'")) == "echo 'a\u2028b'"
    assert _script(run_instruction("post_build", "a\r\nb\r\n")) == "a\nb"
    # Nothing to run: no layer at all.
    assert run_instruction("post_build", "\n  \n# only a comment\n") is None
    # No hook text ever becomes a Dockerfile line of its own.
    assert "\n" not in (run_instruction("post_build", "a\nUSER root\nb") or "")


def test_a_failed_build_step_names_its_hook() -> None:
    step = 'Step 9/11 : RUN ["/bin/sh", "-ec", "false", "moat-hook:post_build_root"]'
    assert _failed_hook(["Step 8/11 : RUN apt-get update", " ---> abc", step, "oops"]) == "post_build_root"
    assert _failed_hook(["Step 3/11 : RUN npm install --global x", "npm ERR!"]) is None


def test_build_hooks_are_layers_after_the_dependencies_root_then_the_agents_user() -> None:
    plan = plan_for(HOOKS)
    lines = plan.image.dockerfile.splitlines()
    root = next(i for i, line in enumerate(lines) if "moat-hook:post_build_root" in line)
    user_line = next(i for i, line in enumerate(lines) if "moat-hook:post_build" + '"' in line)
    assert _script(lines[root]).startswith("export HOME=/root\n")  # root's caches are not the agent's
    assert _script(lines[user_line]) == "git config --global pull.rebase true"
    uid, gid = plan.identity.uid, plan.identity.gid
    assert lines[root - 1] == "USER 0:0" and lines[root + 1] == f"USER {uid}:{gid}" and user_line == root + 2
    assert lines.index(f"USER {uid}:{gid}") < root  # the agent's user exists before its hook runs
    assert any(line.startswith("RUN apt-get update") for line in lines[:root])  # the dependencies first
    assert "figlet;\n# a comment line is not a command\n\necho done \\" in _script(lines[root])
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
                                                   ("false", 1, False), ("-x true", 127, False)])
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


def test_dry_run_shows_the_pre_run_hook_as_a_script_not_as_plan_lines() -> None:
    from moat.cli.planview import render_plan

    text = render_plan(plan_for("hooks:\n  pre_run: |\n    npm install\n    Command  rm -rf /\n", command=("true",)))
    assert "\nCommand  rm -rf /" not in text and "  | Command  rm -rf /" in text
    assert "Pre-run hook (before the command, every start)\n  | npm install" in text
