"""The run's network trace: one JSON line per request in its ``network.jsonl`` (standard library only).

Field names follow the Go tool's (``ts``, ``method``, ``url``, ``status_code``, ``duration_ms``,
``error``, ``req_headers``, ``resp_headers``), with what moat adds: ``host``, ``req_bytes``,
``resp_bytes``, ``grant``, ``blocked`` and ``reason``. No secret is ever written: headers a grant
set and headers that carry credentials read ``[REDACTED]``, query values whose names say they are
secret read ``REDACTED``, and every registered secret anywhere is masked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from moat.masking import Masker, is_credential_name

REDACTED_HEADER = "[REDACTED]"  # the Go tool's marker
REDACTED_QUERY = "REDACTED"
DROPPED_HEADERS = frozenset({"proxy-authorization", "proxy-connection"})  # the run's own token: never
URL_HEADERS = frozenset({"location", "content-location", "link"})  # headers that carry URLs
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "x-api-key"})
_SIGNATURE_WORDS = frozenset({"sig", "signature"})  # presigned URLs: X-Amz-Signature, sig
_SECRET_QUERY_KEYS = frozenset({"code"})  # an OAuth authorization code


@dataclass
class Exchange:
    """One request as the proxy saw it."""

    started: float  # epoch seconds
    method: str
    url: str  # as the client sent it (placeholders, not the values substituted for them)
    host: str
    status_code: int | None = None
    duration_ms: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    grants: tuple[str, ...] = ()
    blocked: bool = False
    reason: str | None = None
    error: str | None = None
    req_headers: Iterable[tuple[str, str]] = ()
    resp_headers: Iterable[tuple[str, str]] = ()


def secret_query_key(key: str) -> bool:
    words = re.split(r"[_\-.]+", key.lower())
    return is_credential_name(key) or key.lower() in _SECRET_QUERY_KEYS or any(w in _SIGNATURE_WORDS for w in words)


def redact_url(url: str) -> str:
    """``url`` with the values of secret-looking query parameters replaced (names kept)."""
    base, question, rest = url.partition("?")
    if not question:
        return url
    query, hash_mark, fragment = rest.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        pairs.append(f"{key}={REDACTED_QUERY}" if equals and secret_query_key(unquote_plus(key)) else pair)
    return f"{base}?{'&'.join(pairs)}{hash_mark}{fragment}"


def redact_headers(headers: Iterable[tuple[str, str]], injected: frozenset[str], masker: Masker) -> dict[str, str]:
    """A header map for the trace: multiple values joined with ", " (as the Go tool does)."""
    grouped: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}  # lower case → the first spelling seen
    for name, value in headers:
        lower = name.lower()
        if lower in DROPPED_HEADERS:
            continue
        secret = lower in injected or lower in SENSITIVE_HEADERS or is_credential_name(name)
        shown = REDACTED_HEADER if secret else masker.text(value)
        grouped.setdefault(spelled.setdefault(lower, name), []).append(shown)
    return {name: REDACTED_HEADER if REDACTED_HEADER in values else ", ".join(values)
            for name, values in grouped.items()}


def record(exchange: Exchange, masker: Masker, injected: frozenset[str]) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ts": _iso(exchange.started),
        "method": exchange.method,
        "url": masker.text(redact_url(exchange.url)),
        "host": exchange.host,
        "status_code": exchange.status_code or 0,
        "duration_ms": exchange.duration_ms,
        "req_bytes": exchange.req_bytes,
        "resp_bytes": exchange.resp_bytes,
        "grant": ",".join(exchange.grants) or None,
        "blocked": exchange.blocked,
        "reason": masker.text(exchange.reason) if exchange.reason else None,
    }
    if exchange.error:
        line["error"] = masker.text(exchange.error)
    req_headers = redact_headers(exchange.req_headers, injected, masker)
    if req_headers:
        line["req_headers"] = req_headers
    resp_headers = redact_headers(exchange.resp_headers, frozenset(), masker)
    for name in [n for n in resp_headers if n.lower() in URL_HEADERS]:
        # A redirect to a presigned URL (a release download's X-Amz-Signature) is a credential too.
        resp_headers[name] = redact_url(resp_headers[name])
    if resp_headers:
        line["resp_headers"] = resp_headers
    return line


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def append(path: str, line: dict[str, Any]) -> None:
    """One line, appended whole (O_APPEND: lines from concurrent requests never interleave); the
    file is created 0600."""
    # ASCII: a header of arbitrary bytes (surrogate-escaped) cannot stop its own request's line.
    data = (json.dumps(line, separators=(",", ":"), ensure_ascii=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
