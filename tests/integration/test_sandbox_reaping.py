"""A moat killed at any moment leaves nothing that another moat cannot find and end from the records.

The flaky `moat clean` after SIGKILL came from here: when the owning moat died while an agent's
bubblewrap was still setting up, its monitor died (parent-death signal) before the pid namespace's
init had asked for one, so the init and the agent lived on; reaping then looked only at the recorded
monitor pid, found it dead and signalled nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from moat.constants import LABEL_RUN_ID
from moat.runtime.sandbox import SandboxRuntime, procs
from tests.helpers import ROOT, share
from tests.integration.test_sandbox_runtime import Pod, assert_gone, identity, make_pod, sandbox_host

pytestmark = pytest.mark.sandbox
__all__ = ["make_pod", "sandbox_host"]

OWNER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from moat.catalog import load_catalog
    from moat.plan.build import RunRequest, build_plan
    from moat.plan.identity import Identity
    from moat.runtime.sandbox import SandboxRuntime
    from tests.unit.support import parse

    workspace, home, scratch = (Path(arg) for arg in sys.argv[1:4])
    identity = Identity(int(sys.argv[4]), int(sys.argv[5]))
    request = RunRequest(workspace=workspace, command=("sh", "-c", "sleep 300 & sleep 300"), identity=identity,
                         home=home, scratch_root=scratch, runtime="sandbox")
    plan = build_plan(parse("dependencies: [redis]\\n"), request, load_catalog())
    runtime = SandboxRuntime(home, identity)
    runtime.create_network(plan.network, plan.labels, str(plan.scratch))
    service = runtime.create_container(plan.services[0].container, {})
    runtime.start_container(service)
    for path, text in plan.agent.files:  # as the run's pod writes them (its context file)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    agent = runtime.create_container(plan.agent, {})
    runtime.start_container(agent)
    print(plan.run_id, flush=True)
    time.sleep(300)
""")


def reap(home: Path) -> None:
    """What `moat clean` does with an orphaned run's objects: containers first, then networks."""
    runtime = SandboxRuntime(home)
    found = sorted(runtime.objects_with_label(LABEL_RUN_ID), key=lambda o: o.kind != "container")
    for obj in found:
        (runtime.remove_container if obj.kind == "container" else runtime.remove_network)(obj.id)


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.003, 0.01, 0.05, 0.2])
def test_sigkill_of_the_owner_at_any_moment_then_reaping_leaves_nothing(sandbox_host: None, tmp_path: Path,
                                                                        delay: float) -> None:
    workspace, home, scratch = tmp_path / "ws", tmp_path / "home", tmp_path / "scratch"
    workspace.mkdir()
    scratch.mkdir()
    share(workspace)
    who = identity()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(workspace), str(home), str(scratch),
                              str(who.uid), str(who.gid)], cwd=ROOT, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert owner.stdout is not None
    run_id = owner.stdout.readline().decode().strip()
    assert run_id, "the owner did not start the run"
    time.sleep(delay)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    reap(home)
    assert_gone(home, scratch / f"moat-{run_id}", run_id)


def test_a_container_whose_pids_were_never_recorded_is_found_by_its_tag(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod()
    cid = pod.start_agent("sleep", "300")
    record = pod.runtime.records.container(cid)
    init = procs.Proc.from_json(record["init"])
    record.update(monitor=None, init=None)  # as if the owner died between starting and recording it
    pod.runtime.records.write(record["network"], cid, record)
    SandboxRuntime(pod.home).remove_container(cid)
    assert not procs.alive(init)


def test_a_group_is_found_after_its_leader_ended(tmp_path: Path) -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    lead = procs.Proc(leader.pid, procs.stat(leader.pid).start)  # type: ignore[union-attr]
    leader.wait()
    try:
        assert [p.pid for p in procs.group_members(lead)] == [child]
    finally:
        os.kill(child, signal.SIGKILL)
