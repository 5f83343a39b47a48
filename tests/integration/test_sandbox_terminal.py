"""An interactive agent gets a terminal of its own, relayed to moat's in raw mode: its Ctrl-C is a byte
for the agent's own pty (never a signal to moat), and nothing it does reaches the terminal moat was
started from, nor any other terminal of the user."""

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

# Plays moat's part: a SIGINT handler that says so if the terminal's Ctrl-C ever reaches moat, and the
# agent attached to this terminal.
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
    script = sys.argv[6]
    request = RunRequest(workspace=workspace, command=("sh", "-c", script), identity=identity, home=home,
                         scratch_root=scratch, runtime="sandbox", interactive=True)
    plan = build_plan(parse(""), request, load_catalog())
    runtime = SandboxRuntime(home, identity)
    runtime.create_network(plan.network, plan.labels, str(plan.scratch))
    for path, text in plan.agent.files:  # as the run's pod writes them (its context file)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
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


CTRL_C_AGENT = "trap 'echo agent-got-int; exit 5' INT; echo ready; while :; do sleep 0.05; done"


def start_owner(tmp_path: Path, script: str, shell_after: bool = False) -> tuple[int, int, Path, Path]:
    """The owner on a pty of the test's (pid, master fd, home, scratch); with ``shell_after``, a shell
    reads one line from that terminal once the owner has exited (what the user's shell would do)."""
    workspace, home, scratch = tmp_path / "ws", tmp_path / "home", tmp_path / "scratch"
    workspace.mkdir()
    scratch.mkdir()
    share(workspace)
    who = identity()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        argv = [sys.executable, "-c", OWNER, str(workspace), str(home), str(scratch), str(who.uid), str(who.gid),
                script]
        if shell_after:
            argv = ["/bin/sh", "-c", '"$@"; IFS= read -r line; echo "shell-read [$line]"', "owner", *argv]
        os.execv(argv[0], argv)
    return pid, fd, home, scratch


def test_an_interactive_agent_cannot_type_into_the_terminal_moat_came_from(sandbox_host: None,
                                                                            tmp_path: Path) -> None:
    # TIOCSTI on moat's terminal used to queue input that the user's shell ran after moat: as root,
    # under sudo (bubblewrap's CVE-2017-5226). The agent's terminal is its own.
    inject = ("python3 -c \"import fcntl, termios, sys\n"
              "for c in 'pwned-by-the-agent\\n':\n"
              "    fcntl.ioctl(0, termios.TIOCSTI, c.encode())\n"
              "print('injected into', __import__('os').ttyname(0))\"; ls /dev/pts; read -r x; echo agent-read-$x")
    pid, fd, _, _ = start_owner(tmp_path, inject, shell_after=True)
    try:
        seen = read_until(fd, b"agent-read-")  # the agent reads back what it pushed: its own pty
        seen += read_until(fd, b"run_")
        assert b"injected into /dev/pts/" in seen
        listing = seen.split(b"injected into ")[1].split(b"\n", 1)[1].split(b"agent-read-")[0].split()
        assert len(listing) == 1, listing  # /dev/pts holds its own pty and nothing else of the user's
        time.sleep(0.5)
        os.write(fd, b"typed-by-the-user\n")
        seen += read_until(fd, b"shell-read")
        seen += read_until(fd, b"]")
        assert b"shell-read [typed-by-the-user" in seen, seen
        assert b"shell-read [pwned" not in seen
    finally:
        os.waitpid(pid, 0)
        os.close(fd)


def test_a_sandbox_agent_cannot_reach_the_users_other_terminals(sandbox_host: None, tmp_path: Path) -> None:
    master, slave = pty.openpty()  # another terminal of the same user
    who = identity()
    os.fchown(slave, who.uid, who.gid)
    os.write(master, b"typed-secret\n")
    path = os.ttyname(slave)
    pid, fd, _, _ = start_owner(tmp_path, f"[ -e {path} ] && echo visible || echo not-visible;"
                                          f" (head -c 6 < {path}) 2>/dev/null && echo READ || echo cannot-read;"
                                          f" (echo WRITTEN > {path}) 2>/dev/null; echo tried")
    try:
        seen = read_until(fd, b"run_")
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"not-visible" in seen and b"cannot-read" in seen and b"tried" in seen, seen
    assert b"typed-secret" not in seen
    os.set_blocking(master, False)
    try:
        leaked = os.read(master, 100)
    except BlockingIOError:
        leaked = b""
    assert b"WRITTEN" not in leaked  # (a file of that name in its own private /dev is no terminal)
    os.close(master)
    os.close(slave)


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
                                  str(who.uid), str(who.gid), CTRL_C_AGENT])
    try:
        read_until(fd, b"ready")
        os.write(fd, b"\x03")  # Ctrl-C typed on the terminal
        seen = read_until(fd, b"run_")
        assert b"agent-got-int" in seen and b"exit 5" in seen, seen
        assert b"moat-got-int" not in seen  # a byte for the agent's own pty, not a signal to moat
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    run_id = "run_" + seen.split(b"run_")[-1].split()[0].decode()
    assert_gone(home, scratch / f"moat-{run_id}", run_id)
