"""The proxy's mitmproxy addons, one concern each, in the order the daemon installs them:

    Auth → Upstream → HostAccess → Inject → Stream → Trace

Auth says which run a request belongs to (or answers 407); Upstream picks moat's own upstream
proxy, if any, for the destination; HostAccess keeps the agent off the host; Inject applies the
run's grants; Stream passes bodies through as they come; Trace writes the run's network.jsonl. The
decisions themselves are plain functions in inject/access/upstream/trace; these classes only
connect them to mitmproxy's hooks (imported in the daemon's virtualenv only).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from moat.credentials.hosts import normalize_host
from moat.proxy import access, inject, trace
from moat.proxy.registry import Run, RunRegistry, token_from_header
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


class Auth:
    """``Proxy-Authorization: Basic base64(moat:<token>)`` names the run; a client connection keeps
    the run it proved (requests inside a CONNECT tunnel carry no header). The header never goes
    upstream."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def http_connect(self, flow: Any) -> None:
        self._identify(flow)

    def requestheaders(self, flow: Any) -> None:
        self._identify(flow)

    def client_disconnected(self, client: Any) -> None:
        self.state.connections.pop(client.id, None)

    def _identify(self, flow: Any) -> None:
        # Fail closed: whatever goes wrong here, the request is refused (an exception in an addon
        # would let mitmproxy carry on with a flow that no run owns: an open, untraced proxy).
        try:
            self._check(flow)
        except Exception:
            log.exception("refusing a request the proxy could not authenticate")
            flow.metadata.pop(RUN, None)
            self._deny(flow, "Proxy authentication required\n")

    def _check(self, flow: Any) -> None:
        headers = flow.request.headers
        header = headers.get("proxy-authorization")
        headers.pop("proxy-authorization", None)
        headers.pop("proxy-connection", None)
        client_id = flow.client_conn.id
        if header is not None:
            token = token_from_header(header)
            run = self.state.runs.authenticate(token) if token else None
            if run is None:
                self.state.connections.pop(client_id, None)
                self._deny(flow, "Invalid proxy token\n" if token else "Proxy authentication required\n")
                return
            self.state.connections[client_id] = run.run_id
        else:
            run = self.state.run_of_client(client_id)
            if run is None:
                self._deny(flow, "Proxy authentication required\n")
                return
        flow.metadata[RUN] = run
        flow.metadata[URL] = flow.request.url if flow.request.method != "CONNECT" else _authority(flow)
        flow.metadata[HOST] = normalize_host(flow.request.host)

    @staticmethod
    def _deny(flow: Any, body: str) -> None:
        respond(flow, 407, body, {"Proxy-Authenticate": 'Basic realm="moat"'})


def _authority(flow: Any) -> str:
    return f"{flow.request.host}:{flow.request.port}"


def _active(flow: Any) -> bool:
    """A request of a known run that the proxy has not answered itself."""
    return RUN in flow.metadata and not flow.metadata.get(OWN_RESPONSE)


class Upstream:
    """moat's own upstream proxy (from the daemon's environment) for destinations NO_PROXY does not
    exempt, with its credentials on the CONNECT moat sends it."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def http_connect(self, flow: Any) -> None:
        self._route(flow, tls=True)

    def requestheaders(self, flow: Any) -> None:
        self._route(flow, tls=flow.request.scheme == "https")

    def _route(self, flow: Any, *, tls: bool) -> None:
        if not _active(flow):
            return
        proxy = self.state.upstream.for_destination(flow.metadata[HOST], flow.request.port, tls=tls)
        flow.metadata[VIA] = proxy
        # The destination's connection is made through the proxy (a CONNECT to it); a request's
        # decision replaces the tunnel's, as a request inside one may name another host.
        flow.server_conn.via = proxy.spec if proxy else None

    def http_connect_upstream(self, flow: Any) -> None:
        proxy = self.state.upstream_at(flow.server_conn.address)
        if proxy is not None and proxy.auth:
            flow.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(proxy.auth.encode()).decode()


class HostAccess:
    """Refuses the host's own addresses (403) and maps ``moat-host:<port>`` to the host's loopback
    for the run's ``network.host`` ports; checked when the request is made and again, on the
    address actually connected to, when the connection opens (a name that resolved elsewhere a
    moment before cannot lead to the host)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    async def http_connect(self, flow: Any) -> None:
        await self._check(flow)

    async def requestheaders(self, flow: Any) -> None:
        await self._check(flow)

    async def _check(self, flow: Any) -> None:
        if not _active(flow):
            return
        run: Run = flow.metadata[RUN]
        host, port = flow.metadata[HOST], flow.request.port
        if host == access.HOST_GATEWAY:
            if access.gateway_port_allowed(port, run.registration.host_ports):
                # The name stays (requests in a tunnel to it, HTTP/2 ones too, name it again); the
                # connection goes to the host's loopback, see server_connect.
                flow.metadata[MAPPED] = True
                flow.metadata[VIA] = None
                flow.server_conn.via = None  # the host's port is never reached through another proxy
                return
            self._refuse(flow, access.host_service_refusal(port))
            return
        if flow.metadata.get(VIA) is not None:
            # The upstream proxy resolves names, not this machine: only what names this machine
            # wherever it is resolved is refused here (the proxy's own answer is its business).
            address = access.parse_ip(host)
            if address is not None and access.what_address(address):
                self._refuse(flow, access.check_addresses(host, [host]))
            elif access.is_loopback_name(host):
                self._refuse(flow, access.host_address_refusal(host, host, "this machine's name"))
            return
        self._refuse(flow, access.check_addresses(host, await self.state.resolve(host, port, fresh=False)))

    @staticmethod
    def _refuse(flow: Any, refusal: access.Refusal | None) -> None:
        if refusal is None:
            return
        respond(flow, 403, refusal.body, {"X-Moat-Blocked": refusal.kind})
        flow.metadata[BLOCKED] = refusal

    async def server_connect(self, data: Any) -> None:
        server = data.server
        if server.error or not server.address:
            return
        run = self.state.run_of_client(data.client.id)
        if run is None:  # fail closed: no connection leaves for a client that proved no run
            server.error = GUARD_PREFIX + "the connection belongs to no run"
            return
        if self.state.upstream_at(server.address) is not None:
            return  # moat's own upstream proxy is moat's configuration, not the agent's choice
        host, port = str(server.address[0]), int(server.address[1])
        if normalize_host(host) == access.HOST_GATEWAY:
            if run is None or not access.gateway_port_allowed(port, run.registration.host_ports):
                server.error = GUARD_PREFIX + access.host_service_refusal(port).reason
                return
            addresses = [access.HOST_GATEWAY_ADDRESS]  # moat-host:<port> is the host's own port
        else:
            addresses = await self.state.resolve(host, port, fresh=True)
            for text in addresses:
                address = access.parse_ip(text)
                what = access.what_address(address) if address is not None else None
                if what is not None:
                    server.error = GUARD_PREFIX + access.host_address_refusal(host, text, what).reason
                    return
        if addresses and addresses[0] != host:
            # Connect to the address just checked, not to whatever the name resolves to next; the
            # name is put back once connected, for the connection to be reused by name.
            if server.sni is None and access.parse_ip(host) is None:
                server.sni = host
            self.state.pin(server.id, server.address)
            server.address = (addresses[0], port)

    def server_connected(self, data: Any) -> None:
        self._unpin(data.server)

    def server_connect_error(self, data: Any) -> None:
        self._unpin(data.server)

    def _unpin(self, server: Any) -> None:
        original = self.state.unpin(server.id)
        if original is not None:
            # mitmproxy refuses to change the address of an open connection (that would redirect
            # it); putting back the name it was opened for redirects nothing, and lets requests for
            # that name find and reuse it.
            object.__setattr__(server, "address", original)


class Inject:
    """The run's grants for the request's real destination: headers set and removed, placeholders
    replaced in the path, the query, the headers and (read whole up to 1 MiB) the body."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def requestheaders(self, flow: Any) -> None:
        if not _active(flow):
            return
        grants = flow.metadata[RUN].registration.grants
        host = flow.metadata[HOST]
        request = flow.request
        used: dict[str, None] = {}
        sent = list(request.headers.items(multi=True))
        injected = inject.inject_headers(sent, grants, host)
        pairs = injected.headers if injected else sent
        if injected:
            used.update(dict.fromkeys(injected.grants))
        substitutions = inject.substitutions_for(grants, host)
        if substitutions:
            request.path, path_grants = inject.substitute(request.path, substitutions)
            used.update(dict.fromkeys(path_grants))
            replaced = []
            for name, value in pairs:
                new_value, header_grants = inject.substitute(value, substitutions)
                used.update(dict.fromkeys(header_grants))
                replaced.append((name, new_value))
            pairs = replaced
        if injected or substitutions:
            request.headers = http.Headers([(n.encode("utf-8", "surrogateescape"),
                                             v.encode("utf-8", "surrogateescape")) for n, v in pairs])
        flow.metadata[GRANTS] = tuple(used)
        secrets = inject.grant_secrets(grants, host)
        if secrets:
            # The response is scrubbed of the credentials (see inject.Scrubber): asked for uncompressed,
            # so that a compressed echo cannot carry one past the scrubber.
            flow.metadata[SCRUB] = secrets
            if "accept-encoding" in request.headers:
                del request.headers["accept-encoding"]
        length = request.headers.get("content-length", "")
        if substitutions and length.isdigit() and int(length) <= BUFFER_LIMIT:
            flow.metadata[SUBSTITUTIONS] = substitutions  # read whole: the body may hold a placeholder
        else:
            request.stream = Counter(flow.metadata, REQ_BYTES)

    def request(self, flow: Any) -> None:
        substitutions = flow.metadata.pop(SUBSTITUTIONS, None)
        if not substitutions or not _active(flow):
            return
        try:
            body = flow.request.get_content(strict=True)  # decoded, if the client compressed it
        except ValueError:
            body = flow.request.raw_content
            if body is None:
                return
            replaced, used = inject.substitute_bytes(body, substitutions)
            flow.request.raw_content = replaced
        else:
            if body is None:
                return
            replaced, used = inject.substitute_bytes(body, substitutions)
            if used:
                flow.request.set_content(replaced)
        flow.metadata[GRANTS] = tuple(dict.fromkeys((*flow.metadata.get(GRANTS, ()), *used)))


class Counter:
    """A streaming callable that counts the bytes passing through it."""

    def __init__(self, metadata: dict[str, Any], key: str) -> None:
        self.metadata = metadata
        self.key = key
        metadata[key] = 0

    def __call__(self, data: bytes) -> bytes:
        self.metadata[self.key] += len(data)
        return data


class Stream:
    """Responses pass through as they arrive — a server-sent event reaches the agent when it is
    sent, a download never sits whole in the proxy's memory."""

    def responseheaders(self, flow: Any) -> None:
        if flow.metadata.get(OWN_RESPONSE):
            return
        counter = Counter(flow.metadata, RESP_BYTES)
        secrets = flow.metadata.get(SCRUB)
        if not secrets:
            flow.response.stream = counter
            return
        scrubber = inject.Scrubber(secrets)
        response = flow.response
        response.reason = scrubber.text(response.reason or "")
        headers = response.headers
        for name in list(headers.keys()):
            values = headers.get_all(name)
            cleaned = [scrubber.text(v) for v in values]
            if cleaned != values:
                headers.set_all(name, cleaned)
        if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            # Compressed though it was asked not to be: the scrubber would see compressed bytes and
            # the client would inflate the credential. Read whole, decoded, scrubbed (``response``).
            flow.metadata[SCRUB_WHOLE] = True
            return
        response.stream = lambda data: counter(scrubber(data))

    def response(self, flow: Any) -> None:
        if not flow.metadata.pop(SCRUB_WHOLE, False):
            return
        scrubber = inject.Scrubber(flow.metadata[SCRUB])
        body = flow.response.get_content(strict=False) or b""
        flow.metadata[RESP_BYTES] = len(flow.response.raw_content or b"")
        flow.response.set_content(scrubber(body) + scrubber(b""))


class Trace:
    """One line per request in the run's trace file."""

    def __init__(self, state: ProxyState, write: Callable[[str, dict[str, Any]], None] = trace.append) -> None:
        self.state = state
        self.write = write
        self._failing: set[str] = set()  # runs whose trace cannot be written: said once, not per request

    def response(self, flow: Any) -> None:
        self._record(flow)

    def error(self, flow: Any) -> None:
        # mitmproxy's own error page quotes what it received: from a granted host, that may be an echo
        # of the request with the credential in it. Such a flow ends without an answer.
        secrets = flow.metadata.get(SCRUB)
        if secrets and flow.error and flow.killable and inject.Scrubber(secrets).text(flow.error.msg) != flow.error.msg:
            flow.kill()  # (its message stays mitmproxy's own "killed": that is how it knows not to answer)
        self._record(flow)

    def http_connect_error(self, flow: Any) -> None:
        self._record(flow)  # a refused CONNECT: no request follows it

    def tls_failed_client(self, data: Any) -> None:
        """The agent refused the certificate moat's CA signed: say so in its trace, it is the
        first thing to check when a tool reports a TLS error."""
        run = self.state.run_of_client(data.context.client.id)
        if run is None or not run.registration.trace_file:
            return
        sni = data.conn.sni or "(no server name)"
        exchange = trace.Exchange(started=time.time(), method="CONNECT", url=sni, host=sni,
                                  error=f"the client refused moat's certificate for {sni}: does it trust "
                                        "moat's CA (SSL_CERT_FILE and friends)?")
        self._write(run, trace.record(exchange, run.masker, run.injected_names))

    def _record(self, flow: Any) -> None:
        run: Run | None = flow.metadata.get(RUN)
        if run is None or not run.registration.trace_file or flow.metadata.get("moat.traced"):
            return
        flow.metadata["moat.traced"] = True
        request, response = flow.request, flow.response
        started = request.timestamp_start or time.time()
        ended = (response.timestamp_end if response is not None else None) or time.time()
        refusal: access.Refusal | None = flow.metadata.get(BLOCKED)
        error = flow.error.msg if flow.error is not None else None
        blocked = refusal is not None
        reason = refusal.reason if refusal is not None else None
        if error and GUARD_PREFIX in error:
            blocked, reason = True, error.split(GUARD_PREFIX, 1)[1]
        exchange = trace.Exchange(
            started=started,
            method=request.method,
            url=flow.metadata.get(URL, request.url),
            host=flow.metadata.get(HOST, request.host),
            status_code=response.status_code if response is not None else (502 if error else None),
            duration_ms=max(0, round((ended - started) * 1000)),
            req_bytes=flow.metadata.get(REQ_BYTES, len(request.raw_content or b"")),
            resp_bytes=flow.metadata.get(RESP_BYTES, len(response.raw_content or b"") if response else 0),
            grants=flow.metadata.get(GRANTS, ()),
            blocked=blocked,
            reason=reason,
            error=error,
            req_headers=request.headers.items(multi=True),
            resp_headers=response.headers.items(multi=True) if response is not None else (),
        )
        self._write(run, trace.record(exchange, run.masker, run.injected_names))

    def _write(self, run: Run, line: dict[str, Any]) -> None:
        path = run.registration.trace_file
        if not path:
            return
        try:
            self.write(path, line)
        except Exception as exc:  # a full disk, a removed run directory, odd data: never stop the proxy
            if run.run_id not in self._failing:
                self._failing.add(run.run_id)
                log.warning("cannot write the trace of run %s: %s", run.run_id,
                            getattr(exc, "strerror", None) or type(exc).__name__)
        else:
            self._failing.discard(run.run_id)


def addons(state: ProxyState) -> list[Any]:
    return [Auth(state), Upstream(state), HostAccess(state), Inject(state), Stream(), Trace(state)]
