"""``claude.base_url``: Claude Code's API traffic sent to another endpoint (an LLM proxy on the host
such as Headroom, a company gateway), with the run's ``claude``/``anthropic`` grant injected for
that endpoint exactly as for api.anthropic.com — the agent still holds only a placeholder.

An endpoint on this machine (``localhost``, ``127.0.0.1``, ``[::1]``) cannot be reached from the
container by that name: the agent is pointed at ``moat-host:<port>`` instead, which moat's proxy
maps to the host's loopback for the ports a run lists (the Go tool reaches it through a relay on
its proxy; the way is the same, the name is moat's). Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from moat.credentials.rules import GrantRules
from moat.plan.proxy import HOST_GATEWAY, ResolvedGrant

BASE_URL_VARIABLE = "ANTHROPIC_BASE_URL"
ANTHROPIC_GRANTS = ("claude", "anthropic")  # the providers whose credential Claude Code's API calls carry
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class BaseUrl:
    url: str  # what the agent is told (ANTHROPIC_BASE_URL)
    host: str  # the host the grant is injected for (moat-host:<port> for this machine's)
    host_port: int | None = None  # the host's own port, reached as moat-host


class BaseUrlError(ValueError):
    """A base_url moat cannot route (the message says why; the caller locates it in moat.yaml)."""


def _on_this_machine(host: str) -> str | None:
    """None: elsewhere; "": this machine, reached at 127.0.0.1; else the address moat cannot reach
    it at (the proxy reaches the host's ports at 127.0.0.1 only)."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return ""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        try:  # 127.1, 0x7f000001: forms the C library reads as addresses, and this module would not
            socket.inet_aton(name)
        except OSError:
            return None
        raise BaseUrlError(f"write the address {name!r} in its usual dotted form") from None
    if address == ipaddress.ip_address("127.0.0.1") or address.is_unspecified:
        return ""  # a server on 0.0.0.0 (or [::]) listens on 127.0.0.1 too
    if address.is_loopback or address.is_unspecified:
        return str(address)
    return None


def route(url: str) -> BaseUrl:
    """Where the agent sends its API calls for ``url``, and the host its grant goes to."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise BaseUrlError("it must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # A credential in moat.yaml would reach the agent's environment: the grant is the way.
        raise BaseUrlError("it must not carry a user or password; the run's claude or anthropic grant is injected"
                           " for its host")
    try:
        port = parts.port
    except ValueError as exc:
        raise BaseUrlError(f"its port is not valid ({exc})") from None
    if port == 0:
        raise BaseUrlError("its port is not valid (0)")
    port = port or DEFAULT_PORTS[parts.scheme]
    host = parts.hostname
    where = _on_this_machine(host)
    if where is None:
        if parts.scheme == "http":
            # The proxy would put the run's credential on the wire in the clear.
            raise BaseUrlError("an endpoint elsewhere must be https:// (the credential travels with each request;"
                               " plain http:// only on this machine)")
        return BaseUrl(url, host)
    if where != "":
        raise BaseUrlError(f"moat reaches this machine's ports at 127.0.0.1, not {where}: point it at"
                           f" http://localhost:{port} with the endpoint listening there")
    if parts.scheme == "https":
        # The proxy reaches the host's port as moat-host; no certificate names that.
        raise BaseUrlError("an endpoint on this machine must be plain http:// (moat's proxy reaches it on the host's"
                           " loopback, and encrypts the agent's side itself)")
    agent_url = urlunsplit((parts.scheme, f"{HOST_GATEWAY}:{port}", parts.path, parts.query, parts.fragment))
    # The grant is for this port of the host alone, not for every port the run lists under network.host.
    return BaseUrl(agent_url, f"{HOST_GATEWAY}:{port}", port)


def _grant_provider(grant: ResolvedGrant) -> str:
    return grant.name.split(":", 1)[0]


def uses_base_url(grants: tuple[ResolvedGrant, ...]) -> bool:
    """Whether a grant that Claude Code's API calls carry is among the run's."""
    return any(_grant_provider(g) in ANTHROPIC_GRANTS for g in grants)


def with_base_url(grants: tuple[ResolvedGrant, ...], base: BaseUrl) -> tuple[ResolvedGrant, ...]:
    """The run's grants, the anthropic ones injected for ``base.host`` too (the same headers, the
    same removals: whatever reaches api.anthropic.com reaches the endpoint)."""
    return tuple(replace(g, rules=_also_for(g.rules, base.host)) if _grant_provider(g) in ANTHROPIC_GRANTS else g
                 for g in grants)


def _also_for(rules: GrantRules, host: str) -> GrantRules:
    return replace(
        rules,
        injections=tuple(replace(i, hosts=(*i.hosts, host)) if host not in i.hosts else i for i in rules.injections),
        substitutions=tuple(replace(s, hosts=(*s.hosts, host)) if host not in s.hosts else s
                            for s in rules.substitutions),
    )
