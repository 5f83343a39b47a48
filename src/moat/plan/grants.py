"""How a run's grants shape its plan: the proxy it registers with, the agent's placeholder variables
and files, the hosts entries and the sandbox's relay. Pure, like the rest of the plan."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from moat.constants import (
    CONTAINER_PREFIX,
    LABEL_ROLE,
    NETWORK_TRACE,
    PROXY_DIR,
    PROXY_RELAY_DIR,
    PROXY_SOCKET,
    ROLE_RELAY,
    RUNS_DIR,
)
from moat.credentials.rules import Registration
from moat.errors import UsageError
from moat.plan.containers import ContainerSpec, Mount
from moat.plan.proxy import HOST_GATEWAY, PROXY_HOST, RELAY_PORT, ProxySpec, ResolvedGrant, Route, routes_around
from moat.policy.rules import NetworkPolicy

if TYPE_CHECKING:  # annotations only: the Keep engine is imported by runs that have a policy
    from moat.policy.keep import RuleSet


def proxy_spec(grants: tuple[ResolvedGrant, ...], host_ports: tuple[int, ...], policy: NetworkPolicy | None,
               run_id: str, home: Path, proxy_ca: Path | None, ca_path: str, route: Route,
               token: str, llm_policy: RuleSet | None = None) -> ProxySpec | None:
    """The run goes through moat's proxy when it has grants, opens host ports (network.host) or has a
    policy to enforce (strict mode, network.rules, claude.llm-gateway)."""
    if not grants and not host_ports and policy is None and llm_policy is None:
        return None
    if proxy_ca is None:
        raise UsageError("this run needs moat's proxy, but its CA was not prepared (a bug in the caller)")
    registration = Registration(
        run_id=run_id,
        token=token,
        grants=tuple(g.rules for g in grants),
        trace_file=str(home / RUNS_DIR / run_id / NETWORK_TRACE),
        host_ports=host_ports,
        extra={**({} if policy is None else {"policy": policy.to_json()}),
               **({} if llm_policy is None else {"llm_policy": llm_policy.to_json()})},
    )
    return ProxySpec(registration, str(proxy_ca), ca_path, route, tuple(g.name for g in grants))


def proxy_hosts(proxy: ProxySpec | None) -> tuple[tuple[str, str], ...]:
    """Docker: moat-proxy and moat-host are the engine's host gateway, where the proxy listens."""
    if proxy is None or proxy.route != "gateway":
        return ()
    return ((PROXY_HOST, "host-gateway"), (HOST_GATEWAY, "host-gateway"))


def relay_spec(proxy: ProxySpec | None, run_id: str, network: str, labels: Mapping[str, str], scratch: Path,
               home: Path) -> ContainerSpec | None:
    """The sandbox's way to the proxy: a relay in the run's network, from 127.0.0.1:RELAY_PORT to the
    proxy's Unix socket (the only mount it has)."""
    if proxy is None or proxy.route != "relay":
        return None
    return ContainerSpec(
        role="relay",
        name=f"{CONTAINER_PREFIX}relay-{run_id}",
        image="",
        labels={**labels, LABEL_ROLE: ROLE_RELAY},
        network=network,
        command=("--listen", f"127.0.0.1:{RELAY_PORT}"),
        mounts=(Mount(str(home / PROXY_DIR / PROXY_RELAY_DIR / PROXY_SOCKET), PROXY_SOCKET, read_only=True),),
        scratch=str(scratch / "relay"),
    )


def grant_files(grants: tuple[ResolvedGrant, ...], scratch: Path, mounted_at: str) -> dict[str, tuple[str, str, str]]:
    """variable → (host file, where the agent sees it, its text) for every file a grant gives."""
    out = {}
    for grant in grants:
        for variable, text in grant.files.items():
            name = variable.lower()
            out[variable] = (str(scratch / "grant-files" / name), f"{mounted_at}/{name}", text)
    return out


def grant_env(grants: tuple[ResolvedGrant, ...], moat_set: set[str], proxy: ProxySpec) -> dict[str, str]:
    """The grants' placeholder variables: none may replace one of moat's, open a way around the proxy,
    or be another grant's."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for grant in grants:
        for key, value in {**grant.env, **dict.fromkeys(grant.files, "")}.items():
            if key in moat_set or routes_around(key, proxy) or key in ("PATH", "HOME"):
                raise UsageError(f"grant {grant.name}: its provider sets {key}, which is moat's to set",
                                 hint="Give the provider's container_env another name.")
            if key in owner:
                raise UsageError(f"grants {owner[key]} and {grant.name} both set {key}",
                                 hint="Keep one of them, or give one provider's container_env another name.")
            owner[key] = grant.name
            out[key] = value
    return out


def clash_message(name: str, env: Mapping[str, str]) -> str:
    if name == "HOME":
        return ("HOME is where an agent command puts the agent's configuration; moving it (into the"
                " workspace, say) would write that over your files: remove it")
    if name in env:
        return f"{name} is set by moat for the agent; choose another name"
    return f"{name} would send the agent around moat's proxy, which this run's grants need; remove it"
