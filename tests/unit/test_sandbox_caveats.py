"""What the sandbox says before a run about what it will not do exactly as moat.yaml asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from moat.plan.identity import Identity
from moat.runtime.sandbox import cgroups, hostinfo
from moat.runtime.sandbox.hostinfo import HostVersion
from tests.unit.support import plan_for

HOST = {"postgres": HostVersion("PostgreSQL", "15.14", "/usr/lib/postgresql/15/bin/postgres"),
        "mariadb": HostVersion("MariaDB", "10.11.14", "/usr/sbin/mariadbd"),
        "redis": HostVersion("Redis", "7.0.15", "/usr/bin/redis-server")}
ME = Identity(1000, 1000)


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostinfo, "find_binary", lambda name, recipe: HOST[recipe.recipe].path)
    monkeypatch.setattr(hostinfo, "host_version", lambda recipe, path, identity: HOST[recipe])


class Enforcing(cgroups.Cgroups):
    def unenforceable(self, controller: str) -> str | None:
        return None


def caveats(text: str, limits: cgroups.Cgroups | None = None) -> list[str]:
    plan = plan_for(text, runtime="sandbox")
    return hostinfo.caveats(plan, ME, limits or Enforcing())


def test_a_version_the_host_does_not_have_is_named() -> None:
    assert caveats("dependencies: [postgres@17, redis@7]\n") == [
        "postgres 17 requested: the sandbox runs the host's PostgreSQL 15.14 (/usr/lib/postgresql/15/bin/postgres)"]
    assert caveats("dependencies: [postgres@15]\n") == []


def test_mysql_is_always_mariadb_here() -> None:
    assert caveats("dependencies: [mysql@8]\n") == [
        "mysql 8 requested: the sandbox runs the host's MariaDB 10.11.14 (/usr/sbin/mariadbd)"]


def test_an_image_override_is_not_used() -> None:
    assert caveats("dependencies: [redis]\nservices:\n  redis:\n    image: redis:7-alpine\n") == [
        "services.redis.image (redis:7-alpine) is not used: the sandbox runs the host's Redis 7.0.15"
        " (/usr/bin/redis-server)"]


def test_limits_that_cannot_be_enforced_are_said(tmp_path: Path) -> None:
    none_here = cgroups.Cgroups(tmp_path)  # no controller at all
    notes = caveats("dependencies: [redis]\nservices:\n  redis:\n    memory: 64\n"
                    "container:\n  memory: 512\n  cpus: 1.5\n  dns: [1.1.1.1]\n"
                    "  ulimits:\n    nofile: {soft: 1024, hard: 4096}\n", none_here)
    assert notes == [
        "services.redis.memory (64 MB) is not enforced: this host has no memory cgroup controller",
        "container.memory (512) is not enforced: this host has no memory cgroup controller",
        "container.cpus (1.5) is not enforced: this host has no cpu cgroup controller",
        "container.dns is not used: the sandbox's network has no route out, only loopback",
        "container.ulimits (nofile) are not applied by the sandbox runtime",
    ]
    assert caveats("dependencies: [redis]\nservices:\n  redis:\n    memory: 64\ncontainer:\n  memory: 512\n") == []


def test_not_root_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("0\n")
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    assert cgroups.Cgroups(tmp_path).unenforceable("memory") == (
        "moat is not root, and only root may create memory cgroups here")


def test_cgroup_v2_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unified hierarchy, faked: limits land in memory.max / cpu.max, controllers are handed down."""
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    made = cgroups.Cgroups(tmp_path).create("run_x", "moat-redis-run_x", 64, 0.5)
    leaf = tmp_path / "moat" / "run_x" / "moat-redis-run_x"
    assert made == [str(leaf), str(leaf)]
    assert (leaf / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (tmp_path / "moat" / "cgroup.subtree_control").read_text() == "+cpu"
