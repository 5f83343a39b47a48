"""Memory and CPU limits for the sandbox's containers, with cgroups: ``moat/<run-id>/<container>``.

cgroup v1 (a controller per hierarchy: ``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/cpu``) and v2 (one
unified hierarchy) are both handled. Only root may create cgroups here; where that is impossible the
reason is said before the run (``caveats``), never silently dropped.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from moat.errors import EngineError

ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024
CPU_PERIOD = 100_000  # microseconds


@dataclass(frozen=True)
class Cgroups:
    """Where this host's controllers are, and whether moat may use them."""

    root: Path = ROOT

    @property
    def unified(self) -> bool:
        return (self.root / "cgroup.controllers").is_file()

    def _v2_has(self, controller: str) -> bool:
        try:
            return controller in (self.root / "cgroup.controllers").read_text().split()
        except OSError:
            return False

    def hierarchy(self, controller: str) -> Path | None:
        """The directory under which ``controller`` is managed, or None when this host has none."""
        if self.unified:
            return self.root if self._v2_has(controller) else None
        probe = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us"}[controller]
        for name in (controller, "cpu,cpuacct" if controller == "cpu" else controller):
            if (self.root / name / probe).is_file():
                return self.root / name
        return None

    def unenforceable(self, controller: str) -> str | None:
        """Why a ``controller`` limit cannot be enforced here (None: it can)."""
        if self.hierarchy(controller) is None:
            return f"this host has no {controller} cgroup controller"
        if os.geteuid() != 0:
            return f"moat is not root, and only root may create {controller} cgroups here"
        return None

    def paths(self, run: str, name: str) -> dict[str, str]:
        """The cgroup directory per controller a container with these limits would use."""
        found = {}
        for controller in ("memory", "cpu"):
            base = self.hierarchy(controller)
            if base is not None:
                found[controller] = str(base / "moat" / run / name)
        return found

    def create(self, run: str, name: str, memory_mb: int | None, cpus: float | None) -> list[str]:
        """Make the container's cgroups with their limits; the directories to put its processes in."""
        made: list[str] = []
        wanted = {"memory": memory_mb, "cpu": cpus}
        for controller, value in wanted.items():
            if not value or self.unenforceable(controller):
                continue
            path = Path(self.paths(run, name)[controller])
            try:
                self._make(path, controller)
                if controller == "memory":
                    self._limit_memory(path, int(value * MIB))
                else:
                    self._limit_cpu(path, float(value))
            except OSError as exc:
                for done in made:
                    remove(Path(done))
                raise EngineError(f"could not set a {controller} limit for {name}: {exc}") from None
            made.append(str(path))
        return made

    def _make(self, path: Path, controller: str) -> None:
        top = self.hierarchy(controller)
        assert top is not None
        chain = [top / "moat", top / "moat" / path.parent.name, path]
        for directory in chain:
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o755)
            if self.unified and directory is not path:
                # v2: a parent hands its controllers down, or the child has no limit files.
                with contextlib.suppress(OSError):
                    (directory / "cgroup.subtree_control").write_text(f"+{controller}")

    def _limit_memory(self, path: Path, limit: int) -> None:
        if self.unified:
            (path / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            return
        (path / "memory.limit_in_bytes").write_text(str(limit))
        swap = path / "memory.memsw.limit_in_bytes"
        if swap.exists():  # memory + swap: the limit may not be dodged by swapping
            swap.write_text(str(limit))

    def _limit_cpu(self, path: Path, cpus: float) -> None:
        quota = max(1000, int(cpus * CPU_PERIOD))
        if self.unified:
            (path / "cpu.max").write_text(f"{quota} {CPU_PERIOD}")
            return
        (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD))
        (path / "cpu.cfs_quota_us").write_text(str(quota))


def enter(paths: list[str], pid: int) -> None:
    for path in paths:
        (Path(path) / "cgroup.procs").write_text(str(pid))


def members(paths: list[str]) -> list[int]:
    found: set[int] = set()
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            found |= {int(p) for p in (Path(path) / "cgroup.procs").read_text().split()}
    return sorted(found)


def oom_killed(paths: list[str]) -> bool:
    """Whether the kernel killed a process of the container for exceeding its memory limit."""
    for path in paths:
        for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
            with contextlib.suppress(OSError, ValueError):
                for line in (Path(path) / name).read_text().splitlines():
                    field, _, value = line.partition(" ")
                    if field == key and int(value) > 0:
                        return True
    return False


def remove(path: Path, attempts: int = 20) -> None:
    """Remove an (emptied) cgroup, then its run's directory and moat's once they are empty too."""
    for _ in range(attempts):
        try:
            path.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            time.sleep(0.05)  # the last processes are still leaving
    for parent in (path.parent, path.parent.parent):  # moat/<run-id>, then moat/ (other runs may use them)
        with contextlib.suppress(OSError):
            parent.rmdir()
