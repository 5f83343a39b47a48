"""The proxy's mitmproxy addons, one concern each, in the order the daemon installs them:

    Auth → Upstream → Policy → HostAccess → Inject → LlmPolicy → Stream → Trace

Auth says which run a request belongs to (or answers 407); Upstream picks moat's own upstream
proxy, if any, for the destination; HostAccess keeps the agent off the host; Policy applies the
run's network rules; Inject applies the run's grants; LlmPolicy judges Anthropic's answers by
claude.llm-gateway's Keep rules; Stream passes bodies through as they come; Trace writes the run's
network.jsonl (the last two in ``responses``, what they share in ``flows``). The decisions themselves are plain
functions in inject/access/upstream/trace; these classes only connect them to mitmproxy's hooks
(imported in the daemon's virtualenv only).
"""

from __future__ import annotations

import base64
from typing import Any

from mitmproxy import http

from moat.credentials.hosts import host_matches, normalize_host
from moat.policy import rules
from moat.proxy import access, inject, llmpolicy
from moat.proxy.flows import (
    BLOCKED,
    BUFFER_LIMIT,
    GRANTS,
    GUARD_PREFIX,
    HOST,
    LLM_JUDGE,
    LLM_LOGGED,
    MAPPED,
    OWN_RESPONSE,
    REQ_BYTES,
    RUN,
    SCRUB,
    SUBSTITUTIONS,
    URL,
    VIA,
    ProxyState,
    log,
    respond,
)
from moat.proxy.registry import Run, token_from_header
from moat.proxy.responses import Counter, Stream, Trace


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
    """Refuses the host's own addresses (407, as every refusal of moat's policy) and maps
    ``moat-host:<port>`` to the host's loopback for the run's ``network.host`` ports; checked when
    the request is made and again, on the address actually connected to, when the connection opens
    (a name that resolved elsewhere a moment before cannot lead to the host)."""

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
        # A 407 like the rules' refusals (the Go tool's): clients surface it as a proxy's answer, and
        # Moat-Policy tells it from a wrong token (Basic).
        respond(flow, 407, refusal.body, {"X-Moat-Blocked": refusal.kind, "Proxy-Authenticate": "Moat-Policy"})
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


class Policy:
    """The run's network policy (network.rules; strict mode): a tunnel to a host it does not admit
    never opens, and each request — plain, or inside an admitted tunnel — is judged by the rules.
    A refusal is a 407 the agent can read (``X-Moat-Blocked: request-rule``, ``Proxy-Authenticate:
    Moat-Policy``, the moat.yaml lines that would allow it), and a line of the trace.

    A tunnel that carries no HTTP (mitmproxy relays it as raw TCP) to a host with method or path
    rules is cut when it starts: the rules could not be applied to it (a request split oddly, or
    preceded by a blank line, would otherwise pass as raw bytes)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def http_connect(self, flow: Any) -> None:
        self._check(flow, tunnel=True)

    def tcp_start(self, flow: Any) -> None:
        run = self.state.run_of_client(flow.client_conn.id)
        policy = run.policy if run is not None else None
        address = flow.server_conn.address
        if policy is None or not address or address[0] == access.HOST_GATEWAY:
            return
        host = str(address[0])
        entry = next((e for e in policy.hosts if host_matches(e.host, host)), None)  # as decide() picks
        if entry is None or not entry.rules:
            return
        why = (f"{normalize_host(host)} has method and path rules, and this connection carries no HTTP"
               " they could be applied to")
        flow.metadata[BLOCKED] = access.Refusal(access.KIND_REQUEST_RULE, why, why)
        flow.kill()

    def requestheaders(self, flow: Any) -> None:
        self._check(flow, tunnel=False)

    @staticmethod
    def _check(flow: Any, *, tunnel: bool) -> None:
        if not _active(flow):
            return
        policy = flow.metadata[RUN].policy
        host = flow.metadata[HOST]
        if policy is None or host == access.HOST_GATEWAY:  # the host's ports are network.host's
            return
        request = flow.request
        decision = policy.admits_host(host) if tunnel else policy.decide(host, request.method, request.path)
        if decision.allowed:
            return
        # A host the policy does not list at all: the line to add is the host's, whatever the path.
        unlisted = tunnel or not policy.admits_host(host).allowed
        body = rules.refusal_text(host, request.method, request.path, decision, tunnel=unlisted)
        respond(flow, 407, body, {"X-Moat-Blocked": access.KIND_REQUEST_RULE, "Proxy-Authenticate": "Moat-Policy"})
        flow.metadata[BLOCKED] = access.Refusal(access.KIND_REQUEST_RULE, decision.why, body)


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
        if host == access.HOST_GATEWAY:
            # The host's ports are each a service of their own: a grant names the one it is for
            # (claude.base_url's endpoint), never every port the run lists.
            host = f"{host}:{request.port}"
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


class LlmPolicy:
    """claude.llm-gateway: Anthropic's Messages answers read whole, judged by the run's Keep rules,
    and replaced by Keep's 400 policy_denied when a rule denies (see ``llmpolicy``)."""

    def responseheaders(self, flow: Any) -> None:
        run = flow.metadata.get(RUN)
        if not _active(flow) or run is None or run.llm_policy is None:
            return
        request = flow.request
        # Every answer of the Messages API is read whole (Stream leaves it so: streamed, it could
        # not be taken back); only a successful one holds what the model asked for.
        if llmpolicy.applies(flow.metadata[HOST], request.method, request.path):
            flow.metadata[LLM_JUDGE] = True

    def response(self, flow: Any) -> None:
        if not flow.metadata.pop(LLM_JUDGE, False) or flow.metadata.get(BLOCKED):
            return
        response = flow.response
        if not 200 <= response.status_code < 300:
            return  # the API's error (an overload, a retry-after): the agent's to see as it is
        try:
            body = response.get_content(strict=True) or b""
            verdict = llmpolicy.judge(flow.metadata[RUN].llm_policy, body, response.headers.get("content-type", ""))
        except Exception as exc:  # an addon's exception would let mitmproxy pass the answer on: deny
            log.exception("denying an answer the LLM policy could not judge")
            verdict = llmpolicy.Verdict(True, "evaluation-error", f"The response could not be judged: {exc}")
        if verdict.logged:
            flow.metadata[LLM_LOGGED] = verdict.logged
        if verdict.denied:
            self._deny(flow, verdict)

    @staticmethod
    def _deny(flow: Any, verdict: llmpolicy.Verdict) -> None:
        body = llmpolicy.denied_body(verdict)
        flow.response = http.Response.make(400, body, {"Content-Type": "application/json"})
        why = f"claude.llm-gateway: {verdict.rule}" + (f" ({verdict.message})" if verdict.message else "")
        flow.metadata[BLOCKED] = access.Refusal(access.KIND_LLM_POLICY, why, body.decode())


def addons(state: ProxyState) -> list[Any]:
    # Policy before HostAccess: a host the policy refuses is refused before anything looks its name
    # up (a lookup is itself a way out: a name can carry data to a resolver, its answer back).
    return [Auth(state), Upstream(state), Policy(state), HostAccess(state), Inject(state), LlmPolicy(), Stream(),
            Trace(state)]
