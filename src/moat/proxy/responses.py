"""The proxy's addons for responses: bodies streamed as they come (scrubbed of a grant's credential
on its hosts) and every exchange written to the run's trace."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from moat.proxy import access, inject, trace
from moat.proxy.flows import (
    BLOCKED,
    GRANTS,
    GUARD_PREFIX,
    HOST,
    LLM_JUDGE,
    LLM_LOGGED,
    OWN_RESPONSE,
    REQ_BYTES,
    RESP_BYTES,
    RUN,
    SCRUB,
    SCRUB_WHOLE,
    URL,
    ProxyState,
    log,
)
from moat.proxy.registry import Run


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
        judged = bool(flow.metadata.get(LLM_JUDGE))  # read whole: the policy may replace it
        if not secrets:
            if not judged:
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
        if judged or headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
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

    def tcp_end(self, flow: Any) -> None:
        """A tunnel that carried no HTTP (a database protocol to moat-host, anything raw): one line
        when it closes, so that nothing an agent sends through the proxy goes unrecorded."""
        self._tcp(flow)

    def tcp_error(self, flow: Any) -> None:
        self._tcp(flow)

    def _tcp(self, flow: Any) -> None:
        run = self.state.run_of_client(flow.client_conn.id)
        if run is None or not run.registration.trace_file or flow.metadata.get("moat.traced"):
            return
        flow.metadata["moat.traced"] = True
        address = flow.server_conn.address
        target = f"{address[0]}:{address[1]}" if address else "(unknown)"
        sent = sum(len(m.content) for m in flow.messages if m.from_client)
        received = sum(len(m.content) for m in flow.messages if not m.from_client)
        started = flow.client_conn.timestamp_start or time.time()
        refusal = flow.metadata.get(BLOCKED)
        exchange = trace.Exchange(started=started, method="TCP", url=target, host=str(address[0] if address else ""),
                                  duration_ms=int((time.time() - started) * 1000), req_bytes=sent,
                                  resp_bytes=received, blocked=refusal is not None,
                                  reason=refusal.reason if refusal is not None else None,
                                  error=None if refusal is not None or not flow.error else flow.error.msg)
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
        line = trace.record(exchange, run.masker, run.injected_names)
        if flow.metadata.get(LLM_LOGGED):  # claude.llm-gateway's log rules (and audit_only's would-be denials)
            line["llm_policy_logged"] = list(flow.metadata[LLM_LOGGED])
        self._write(run, line)

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
