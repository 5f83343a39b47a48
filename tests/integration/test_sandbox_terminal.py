"""An interactive agent shares moat's terminal: its Ctrl-C is the agent's, and bubblewrap outlives it."""

from __future__ import annotations

import os
import pty
import select
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, share
from tests.integration.test_sandbox_runtime import assert_gone, identity, sandbox_host

pytestmark = pytest.mark.sandbox
__all__ = ["sandbox_host"]

# Plays moat's part: its own SIGINT handler (the run layer does not forward SIGINT to an interactive
# agent), the agent started on this terminal.
OWNER = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from moat.catalog import load_catalog
    from moat.plan.build import RunRequest, build_plan
    from moat.plan.identity import Identity
    from moat.runtime.sandbox import SandboxRuntime
    from tests.unit.support import parse

    signal.signal(signal.SIGINT, lambda *_: print("moat-got-int", flush=True))
    workspace, home, scratch = (Path(arg) for arg in sys.argv[1:4])
    identity = Identity(int(sys.argv[4]), int(sys.argv[5]))
    script = "trap 'echo agent-got-int; exit 5' INT; echo ready; while :; do sleep 0.05; done"
    request = RunRequest(workspace=workspace, command=("sh", "-c", script), identity=identity, home=home,
                         scratch_root=scratch, runtime="sandbox", interactive=True)
    plan = build_plan(parse(""), request, load_catalog())
    runtime = SandboxRuntime(home, identity)
    runtime.create_network(plan.network, plan.labels, str(plan.scratch))
    agent = runtime.create_container(plan.agent, {})
    try:
        print("exit", runtime.attach_terminal(agent), flush=True)
    finally:
        runtime.remove_container(agent)
        runtime.remove_network(plan.network)
    print(plan.run_id, flush=True)
""")


def read_until(fd: int, text: bytes, timeout: float = 20) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"timed out waiting for {text!r}; saw {seen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_ctrl_c_reaches_the_interactive_agent_and_its_exit_code_comes_back(sandbox_host: None,
                                                                           tmp_path: Path) -> None:
    workspace, home, scratch = tmp_path / "ws", tmp_path / "home", tmp_path / "scratch"
    workspace.mkdir()
    scratch.mkdir()
    share(workspace)
    who = identity()
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, the pty its controlling terminal
        os.chdir(ROOT)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        os.execv(sys.executable, [sys.executable, "-c", OWNER, str(workspace), str(home), str(scratch),
                                  str(who.uid), str(who.gid)])
    try:
        read_until(fd, b"ready")
        os.write(fd, b"\x03")  # Ctrl-C: the terminal signals its foreground process group
        seen = read_until(fd, b"run_")
        assert b"agent-got-int" in seen and b"exit 5" in seen, seen
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    run_id = "run_" + seen.split(b"run_")[-1].split()[0].decode()
    assert_gone(home, scratch / f"moat-{run_id}", run_id)
