"""What each container of a run really is: computed while planning, shown by ``--dry-run``.

The run is a pod: the agent and its service sidecars share one network. Every mount, tmpfs, user,
capability and limit is decided here, from the plan's inputs alone; a runtime creates exactly what a
``ContainerSpec`` says and chooses no paths of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# relay: forwards the proxy into the run's network (the sandbox); holder: a strict Docker run's pod,
# owner of its loopback-only network namespace and its relay to the proxy (see plan.pod)
Role = Literal["agent", "service", "relay", "holder"]


@dataclass(frozen=True)
class Mount:
    """A host path bound into the container."""

    source: str  # host path
    target: str  # path inside the container
    read_only: bool = False
    # The directory is created (0700, owned by the invoking user) before the container starts:
    # a bind of a missing path would otherwise be created by the engine, as root.
    create: bool = False
    # Who owns it when moat creates it as root for an agent of another uid (its session logs).
    owner: tuple[int, int] | None = None
    # With ``create``: the directories made between this one and ``source`` are 0711, so that the
    # agent's user (the sandbox binds as that user) reaches its own directory and lists none.
    reach_from: str | None = None
    # A Docker named volume (``source`` is the engine's name for it), as "<run name>/<volume>": made
    # on first use, owned by ``owner``, kept across runs.
    volume: str = ""
    # The run's volume workspace (workspace.mode: volume; ``source`` is the engine's volume), filled
    # with a copy of the workspace before the agent starts, kept after the run until `moat destroy`.
    workspace_copy: bool = False
    # Paths under the mount (relative) hidden behind empty in-memory directories (mounts.exclude).
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerSpec:
    """One container: the agent or a service sidecar."""

    role: Role
    name: str
    image: str
    labels: Mapping[str, str]
    network: str
    command: tuple[str, ...] | None = None  # None keeps the image's own
    entrypoint: tuple[str, ...] | None = None  # None keeps the image's own (then so must command)
    env: Mapping[str, str] = field(default_factory=dict)
    service: str | None = None  # the service's name, for a sidecar
    hostname: str | None = None
    aliases: tuple[str, ...] = ()  # names it answers to on the run network
    extra_hosts: tuple[tuple[str, str], ...] = ()  # /etc/hosts entries: (name, address or "host-gateway")
    working_dir: str | None = None
    mounts: tuple[Mount, ...] = ()
    tmpfs: tuple[str, ...] = ()  # directories kept in memory
    user: str | None = None  # "uid:gid"; None: the image's own user
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = False
    memory_mb: int | None = None
    cpus: float | None = None
    dns: tuple[str, ...] = ()
    ulimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name → (soft, hard)
    tty: bool = False
    stdin_open: bool = False
    init: bool = False  # a tiny init as PID 1: forwards signals, reaps zombies
    # Started while the services start, then blocked until its turn (see ``HOLD_WRAPPER``): starting
    # a container costs a few hundred milliseconds, which are then off the run's critical path.
    held: bool = False
    scratch: str | None = None  # a private host directory a runtime may keep this container's files in
    # Files moat writes before creating the container (host path, text), for its read-only mounts:
    # what they hold is never a secret (a grant's configuration with placeholders).
    files: tuple[tuple[str, str], ...] = ()
    groups: tuple[int, ...] = ()  # supplementary groups (the Docker socket's, for docker:host)

    def to_dict(self, mask: Any) -> dict[str, Any]:
        """JSON-ready, secrets masked by ``mask`` (a ``Masker``)."""
        return {
            "role": self.role,
            "name": self.name,
            "image": self.image,
            "service": self.service,
            "network": self.network,
            "command": [mask.text(a) for a in self.command] if self.command else None,
            **({"entrypoint": list(self.entrypoint)} if self.entrypoint is not None else {}),
            "env": mask.mapping(self.env),
            "hostname": self.hostname,
            "aliases": list(self.aliases),
            "extra_hosts": [list(pair) for pair in self.extra_hosts],
            "working_dir": self.working_dir,
            "mounts": [{"source": m.source, "target": m.target, "read_only": m.read_only,
                        **({"type": "volume"} if m.volume or m.workspace_copy else {}),
                        **({"excluded": list(m.excluded)} if m.excluded else {})} for m in self.mounts],
            "tmpfs": list(self.tmpfs),
            "user": self.user,
            "cap_drop": list(self.cap_drop),
            "no_new_privileges": self.no_new_privileges,
            "memory_mb": self.memory_mb,
            "cpus": self.cpus,
            "dns": list(self.dns),
            "ulimits": {k: {"soft": s, "hard": h} for k, (s, h) in self.ulimits.items()},
            "tty": self.tty,
            "stdin_open": self.stdin_open,
            "init": self.init,
            "held": self.held,
            "files": [path for path, _ in self.files],
            "groups": list(self.groups),
        }


# Waits for one line on stdin, then runs the agent's command with stdin from /dev/null (as a
# container without -i has it). No line (stdin closed) means the run ended before the agent's turn.
HOLD_WRAPPER = ("sh", "-c", 'read -r _ || exit 125; exec "$0" "$@" </dev/null')
HOLD_ABANDONED = 125  # the held agent's exit code when the run ended before its turn
