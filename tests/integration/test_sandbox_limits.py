"""Memory and CPU limits in the sandbox: enforced with cgroups where moat may create them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from moat.runtime.sandbox.cgroups import Cgroups
from tests.integration.test_sandbox_runtime import Pod, make_pod, sandbox_host

pytestmark = pytest.mark.sandbox
__all__ = ["make_pod", "sandbox_host"]  # fixtures this module uses

MIB = 1024 * 1024
HOG = "x = bytearray({mb} * 1024 * 1024); print('survived')"  # touches every page


def said_instead(pod: Pod, controller: str, caveat: str) -> bool:
    """Where a limit cannot be enforced (moat not root, no controller), it is said: the test checks that."""
    why = Cgroups().unenforceable(controller)
    if why:
        assert f"{caveat} is not enforced: {why}" in pod.runtime.caveats(pod.plan)
    return why is not None


def test_a_service_memory_limit_is_its_cgroup_and_kills_what_exceeds_it(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [redis]\nservices:\n  redis:\n    memory: 32\n")
    if said_instead(pod, "memory", "services.redis.memory (32 MB)"):
        return
    cid = pod.start("redis")
    pod.ready("redis")
    [memory, *_] = [Path(p) for p in pod.runtime.records.container(cid)["cgroups"] if "memory" in p]
    assert memory == Path(f"/sys/fs/cgroup/memory/moat/{pod.plan.run_id}/{pod.plan.services[0].container.name}")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 32 * MIB
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert int((memory / "memory.memsw.limit_in_bytes").read_text()) == 32 * MIB
    members = {int(p) for p in (memory / "cgroup.procs").read_text().split()}
    assert members, "the service's processes are in its cgroup"
    # A command run in the service is in its cgroup too, and dies when it takes more than the limit.
    small = pod.runtime.exec(cid, ("python3", "-c", HOG.format(mb=4)), {})
    assert small.output.strip() == "survived"
    big = pod.runtime.exec(cid, ("python3", "-c", HOG.format(mb=64)), {})
    assert big.exit_code == 137 and "survived" not in big.output
    pod.runtime.remove_container(cid)
    assert not memory.exists()


def test_the_agents_memory_limit(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("container:\n  memory: 128\n")
    if said_instead(pod, "memory", "container.memory (128)"):
        return
    code, out, _ = pod.agent("python3", "-c", HOG.format(mb=8))
    assert (code, out.strip()) == (0, "survived")
    cid = pod.start_agent("python3", "-c", HOG.format(mb=256))
    assert pod.runtime.wait(cid) == 137
    assert pod.runtime.state(cid).oom_killed


def test_the_agents_cpu_limit_is_its_cgroup(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("container:\n  cpus: 0.5\n")
    if said_instead(pod, "cpu", "container.cpus (0.5)"):
        return
    cid = pod.start_agent("sleep", "5")
    paths = pod.runtime.records.container(cid)["cgroups"]
    [cpu] = [Path(p) for p in paths if "/cpu" in p]
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    pod.runtime.remove_container(cid)
    assert not cpu.exists()


def test_unenforceable_limits_are_said_not_dropped(tmp_path: Path) -> None:
    nothing = Cgroups(tmp_path)  # a host without controllers
    assert nothing.unenforceable("memory") == "this host has no memory cgroup controller"
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    if os.geteuid() == 0:
        assert Cgroups(tmp_path).unenforceable("memory") is None
    else:
        assert "moat is not root" in (Cgroups(tmp_path).unenforceable("memory") or "")
