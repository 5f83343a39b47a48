"""What the proxy's addons share: which client connection is which run, the metadata keys they leave
on a flow for one another, and how the proxy answers a request itself."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from mitmproxy import http

from moat.credentials.hosts import normalize_host
from moat.proxy import access
from moat.proxy.registry import Run, RunRegistry
from moat.proxy.upstream import UpstreamConfig, UpstreamProxy

log = logging.getLogger("moat.proxy")

# What the addons leave on a flow for the next ones (flow.metadata keys).
RUN = "moat.run"  # the Run the request belongs to
URL = "moat.url"  # the URL as the client asked for it (before any substitution or mapping)
HOST = "moat.host"  # the host as the client named it (moat-host stays moat-host)
VIA = "moat.via"  # the upstream proxy chosen for it, or None
OWN_RESPONSE = "moat.own-response"  # the proxy answered itself (a refusal, a 407)
BLOCKED = "moat.blocked"  # the Refusal
MAPPED = "moat.mapped"  # moat-host:<port>, sent to the host's port
GRANTS = "moat.grants"  # the grants applied
SCRUB = "moat.scrub"  # the credentials a response from this host must not carry back
SCRUB_WHOLE = "moat.scrub-whole"  # a compressed response, scrubbed once read whole
LLM_JUDGE = "moat.llm-judge"  # an answer claude.llm-gateway's rules judge: read whole, not streamed
LLM_LOGGED = "moat.llm-logged"  # the rules that matched it with action log (or would deny, audit_only)
SUBSTITUTIONS = "moat.substitutions"  # token substitutions still to apply to the body
REQ_BYTES = "moat.req-bytes"
RESP_BYTES = "moat.resp-bytes"

GUARD_PREFIX = "moat refused the connection: "  # in a server error: the connect-time guard said no
RESOLVE_TTL = 5.0  # seconds a name's addresses are reused for the request-time check
BUFFER_LIMIT = 1024 * 1024  # request bodies a substitution may apply to are read whole up to this


class ProxyState:
    """What the addons share: the registry, which client connection is which run, the upstream
    proxy configuration, and names resolved recently."""

    def __init__(self, runs: RunRegistry, upstream: UpstreamConfig) -> None:
        self.runs = runs
        self.upstream = upstream
        self.connections: dict[str, str] = {}  # client connection id → run id
        self._resolved: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._pinned: dict[str, tuple[str, int]] = {}  # server connection id → the address it was for

    def run_of_client(self, client_id: str) -> Run | None:
        run_id = self.connections.get(client_id)
        return self.runs.get(run_id) if run_id is not None else None

    def upstream_at(self, address: tuple[str, int]) -> UpstreamProxy | None:
        for proxy in self.upstream.proxies:
            if (normalize_host(proxy.host), proxy.port) == (normalize_host(str(address[0])), address[1]):
                return proxy
        return None

    async def resolve(self, host: str, port: int, *, fresh: bool) -> list[str]:
        """The addresses ``host`` stands for ([] when it resolves to nothing)."""
        if access.parse_ip(host) is not None:
            return [host.strip("[]")]
        key = (host, port)
        now = time.monotonic()
        cached = self._resolved.get(key)
        if not fresh and cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(self._resolved) > 4096:
            self._resolved.clear()
        self._resolved[key] = (now + RESOLVE_TTL, addresses)
        return addresses

    def pin(self, server_id: str, address: tuple[str, int]) -> None:
        self._pinned[server_id] = address

    def unpin(self, server_id: str) -> tuple[str, int] | None:
        return self._pinned.pop(server_id, None)


REFUSED_BODY_LIMIT = 64 * 1024  # bytes of a refused request's body read before the answer


def respond(flow: Any, status: int, body: str, headers: dict[str, str]) -> None:
    """Answer the request here. mitmproxy reads a request's whole body before it answers: a refused
    request with a large (or unknown) body is cut off instead, or anyone could fill the shared
    daemon's memory with one unauthenticated upload."""
    request = flow.request
    length = request.headers.get("content-length", "0").strip()
    if "transfer-encoding" in request.headers or not length.isdigit() or int(length) > REFUSED_BODY_LIMIT:
        flow.metadata[OWN_RESPONSE] = True
        if flow.killable:
            flow.kill()
        return
    flow.response = http.Response.make(status, body.encode(), {
        "Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", **headers})
    flow.metadata[OWN_RESPONSE] = True
