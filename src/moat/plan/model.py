"""The run plan: a complete, pure-data description of what a run will start.

Built by ``plan.build`` without touching any engine; executed by a runtime; printed by
``moat run --dry-run``. Secrets stay in the plan (the runtime needs them) and are masked in every
rendering through ``Masker``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moat.agents.plugins import PluginSet
from moat.catalog.model import Provisions
from moat.constants import MASK
from moat.masking import Masker
from moat.plan.containers import ContainerSpec
from moat.plan.endpoints import Endpoints
from moat.plan.identity import Identity
from moat.plan.proxy import PROXY_HOST, PROXY_USER, ProxySpec
from moat.plan.warm import WarmSpec
from moat.policy.rules import NetworkPolicy


@dataclass(frozen=True)
class ImageSpec:
    tag: str  # moat/run:<16 hex>
    base_image: str
    dockerfile: str
    dependencies: tuple[str, ...]  # canonical specs, sorted
    uid: int
    gid: int
    base_image_explicit: bool = False  # moat.yaml's base_image chose it
    # Files the Dockerfile COPYs (name → text), sent with it as the build context: the build CA.
    context: Mapping[str, str] = field(default_factory=dict)
    # Claude Code's plugin marketplaces: fetched on the host into the context when the image is built.
    claude_plugins: PluginSet | None = None
    fetched: Mapping[str, bytes] = field(default_factory=dict)  # what was fetched for the build (not in the tag)


@dataclass(frozen=True)
class ProbeSpec:
    """A readiness check run inside the service container (argv, never a shell string)."""

    command: tuple[str, ...]
    env: Mapping[str, str]
    expect: str | None
    refused: int | None = None  # an exit code that means "never": the wait ends at once


@dataclass(frozen=True)
class ProvisionSpec:
    items: tuple[str, ...]
    timeout: float  # seconds per item, lock waiting included
    recipe: Provisions  # the catalog's how: command, list command, cache path, layout

    @property
    def key(self) -> str:
        return self.recipe.key

    @property
    def noun(self) -> str:
        return self.recipe.noun

    @property
    def command(self) -> tuple[str, ...]:
        return self.recipe.command

    @property
    def cache_path(self) -> str:
        return self.recipe.cache_path


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # also its hostname in the run's pod
    version: str
    image: str  # full reference, e.g. postgres:17 or the user's override
    image_overridden: bool
    port: int
    container: ContainerSpec  # the sidecar, exactly as it will be created
    probe: ProbeSpec
    wait: bool
    ready_timeout: float
    cache_path: str | None  # where the service's host cache is mounted (catalog), if it has one
    # The sidecar writes the host cache as root: hand what it wrote back to the invoking user.
    hand_back_cache: bool
    provision: ProvisionSpec | None
    agent_env: Mapping[str, str]  # the MOAT_<PREFIX>_* variables it gives the agent
    warm: WarmSpec | None = None  # how it starts from a cached initialised template (plan.warm)
    cold_reason: str | None = None  # why it starts afresh although its catalog entry could start warm

    @property
    def container_name(self) -> str:
        return self.container.name

    @property
    def env(self) -> Mapping[str, str]:
        """The container's environment."""
        return self.container.env

    @property
    def command(self) -> tuple[str, ...] | None:
        return self.container.command

    @property
    def memory_mb(self) -> int | None:
        return self.container.memory_mb

    @property
    def tmpfs(self) -> tuple[str, ...]:
        return self.container.tmpfs


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None
    cpus: float | None
    dns: tuple[str, ...]
    ulimits: Mapping[str, tuple[int, int]]  # name → (soft, hard)


@dataclass(frozen=True)
class WorkspaceCopy:
    """workspace.mode: volume: the workspace copied into the run's own volume before the agent starts."""

    volume: str  # the engine's volume, moat-ws-<run id>
    source: str  # the host workspace (read, never written)
    excluded: tuple[str, ...] = ()  # patterns (relative to the workspace) not copied

    def to_dict(self) -> dict[str, Any]:
        return {"volume": self.volume, "source": self.source, "excluded": list(self.excluded)}


@dataclass(frozen=True)
class SnapshotPolicy:
    """moat.yaml's snapshots, for this run (None on the plan when disabled)."""

    pre_run: bool = True  # a snapshot of the workspace before the agent starts
    use_gitignore: bool = True
    additional: tuple[str, ...] = ()  # more patterns to leave out (gitignore syntax)
    max_count: int = 10  # kept, besides the pre-run one unless delete_initial
    delete_initial: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"pre_run": self.pre_run, "use_gitignore": self.use_gitignore, "additional": list(self.additional),
                "max_count": self.max_count, "delete_initial": self.delete_initial}


@dataclass(frozen=True)
class Plan:
    run_id: str
    name: str
    workspace: Path
    config_file: Path | None
    runtime: str
    network: str
    image: ImageSpec
    services: tuple[ServiceSpec, ...]
    command: tuple[str, ...]  # the agent's command, as given (its container may wrap it: see ``held``)
    agent: ContainerSpec  # the agent's container, exactly as it will be created
    identity: Identity  # who the agent is (see plan.identity)
    home: Path  # MOAT_HOME: the run store and the host cache
    warm_cache: Path  # where the services' warm templates are (cache.warm.warm_root)
    scratch: Path  # private per-run host directory (the sandbox keeps its services' files there)
    labels: Mapping[str, str]  # on every engine object of the run (owner labels are added at creation)
    interactive: bool
    limits: Limits
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    proxy: ProxySpec | None = field(default=None, repr=False)  # when the run goes through moat's proxy
    relay: ContainerSpec | None = None  # the sandbox's relay to the proxy, inside the run's network
    forwarder: ContainerSpec | None = None  # the sandbox's relay of the published ports (plan.endpoints)
    holder: ContainerSpec | None = None  # a strict Docker run's pod (see plan.pod): it is the run's network
    policy: NetworkPolicy | None = None  # network.rules and strict mode (None: permissive, no rules)
    agent_cli: str | None = None  # moat claude & co.: which agent the run is
    agent_settings: Mapping[str, Any] = field(default_factory=dict)  # its options, for moat join
    notes: tuple[str, ...] = ()  # what the user is told before the run starts (a setting left unused)
    snapshots: SnapshotPolicy | None = None  # workspace snapshots (moat.yaml's snapshots), None: disabled
    workspace_copy: WorkspaceCopy | None = None  # a volume workspace (None: the workspace is bound)
    endpoints: Endpoints | None = None  # moat.yaml's ports, through the routing proxy

    @property
    def env(self) -> Mapping[str, str]:
        """The agent's environment."""
        return self.agent.env

    def masker(self) -> Masker:
        return Masker(self.secrets)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data, secrets masked (the ``--dry-run --json`` schema)."""
        mask = self.masker()
        return {
            "run_id": self.run_id,
            "name": self.name,
            "workspace": str(self.workspace),
            "config_file": str(self.config_file) if self.config_file else None,
            "runtime": self.runtime,
            "network": self.network,
            "image": {
                "tag": self.image.tag,
                "base_image": self.image.base_image,
                "dependencies": list(self.image.dependencies),
                "uid": self.image.uid,
                "gid": self.image.gid,
                "dockerfile": self.image.dockerfile,
                "context_files": sorted(self.image.context),
            },
            "services": [_service_dict(s, mask) for s in self.services],
            "env": mask.mapping(self.env),
            "command": [mask.text(a) for a in self.command],
            "interactive": self.interactive,
            "identity": {"uid": self.identity.uid, "gid": self.identity.gid},
            "agent": self.agent.to_dict(mask),
            "limits": {
                "memory_mb": self.limits.memory_mb,
                "cpus": self.limits.cpus,
                "dns": list(self.limits.dns),
                "ulimits": {k: {"soft": s, "hard": h} for k, (s, h) in self.limits.ulimits.items()},
            },
            "proxy": None if self.proxy is None else _proxy_dict(self.proxy, mask),
            "relay": None if self.relay is None else self.relay.to_dict(mask),
            "forwarder": None if self.forwarder is None else self.forwarder.to_dict(mask),
            "holder": None if self.holder is None else self.holder.to_dict(mask),
            "policy": None if self.policy is None else self.policy.to_json(),
            "agent_cli": self.agent_cli,
            "agent_settings": dict(self.agent_settings),
            "snapshots": None if self.snapshots is None else self.snapshots.to_dict(),
            "workspace_mode": "bind" if self.workspace_copy is None else "volume",
            "workspace_copy": None if self.workspace_copy is None else self.workspace_copy.to_dict(),
            "endpoints": None if self.endpoints is None else self.endpoints.to_dict(),
        }


def _proxy_dict(proxy: ProxySpec, mask: Masker) -> dict[str, Any]:
    """What the proxy will do for the run, without a single secret: hosts and header names only."""
    registration = proxy.registration
    if proxy.route == "relay":
        host, port = proxy.address(None)
        address = f"{host}:{port}"
    else:
        address = f"{PROXY_HOST}:<port chosen when the proxy starts>"
    return {
        "route": proxy.route,
        "address": address,
        "url": f"http://{PROXY_USER}:{MASK}@{address}",
        "ca": {"host_file": proxy.ca_file, "path": proxy.ca_path},
        "grants": [
            {
                "grant": g.grant,
                "headers": [{"hosts": list(i.hosts), "set": [n for n, _ in i.set], "remove": list(i.remove)}
                            for i in g.injections],
                "substitutions": [{"hosts": list(s.hosts)} for s in g.substitutions],
            }
            for g in registration.grants
        ],
        "host_ports": list(registration.host_ports),
        "trace_file": registration.trace_file,
    }


def _service_dict(service: ServiceSpec, mask: Masker) -> dict[str, Any]:
    provision = service.provision
    return {
        "name": service.name,
        "version": service.version,
        "image": service.image,
        "image_overridden": service.image_overridden,
        "container_name": service.container_name,
        "host": service.name,
        "port": service.port,
        "env": mask.mapping(service.env),
        "command": [mask.text(a) for a in service.command] if service.command else None,
        "readiness": {
            "command": [mask.text(a) for a in service.probe.command],
            "env": mask.mapping(service.probe.env),
            "expect": service.probe.expect,
            "wait": service.wait,
            "timeout_seconds": service.ready_timeout,
        },
        "memory_mb": service.memory_mb,
        "tmpfs": list(service.tmpfs),
        "cache_path": service.cache_path,
        "provision": None if provision is None else {
            "key": provision.key,
            "items": list(provision.items),
            "command": list(provision.command),
            "cache_path": provision.cache_path,
            "timeout_seconds": provision.timeout,
        },
        "agent_env": mask.mapping(service.agent_env),
        "container": service.container.to_dict(mask),
    }
