"""What a run's grants do to one request: header injection and token substitution, as pure
functions over plain values (the mitmproxy addon applies the result; tests need no proxy).

The host is always the request's real destination — the name the proxy connects to — never a
header the client could set to anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from moat.credentials.rules import GrantRules, Substitution

# Headers that carry a comma-separated list of options which the client and a grant both add to:
# Claude's OAuth grant needs `anthropic-beta: oauth-2025-04-20` *beside* the betas Claude Code
# asks for, so the grant's value joins the list instead of replacing it (as the Go tool merges it).
LIST_HEADERS = frozenset({"anthropic-beta"})

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Injected:
    headers: Headers  # the request's headers after injection
    grants: tuple[str, ...]  # the grants whose rules were applied
    names: frozenset[str]  # the header names set by a grant, lower case (the trace redacts them)


def inject_headers(headers: Iterable[tuple[str, str]], grants: Sequence[GrantRules], host: str) -> Injected | None:
    """``headers`` with the grants for ``host`` applied, or None when no grant names the host.

    When the client sent a header that a grant sets (a placeholder, typically), the grants it names
    are the ones meant and only those apply — Claude's OAuth and an Anthropic API key both serve
    api.anthropic.com, and the agent picks one by the header it sends. Otherwise every grant for
    the host applies; two setting the same header: the first, in the run's order, wins.
    """
    candidates = [(g.grant, rule) for g in grants for rule in g.injections if rule.applies_to(host)]
    if not candidates:
        return None
    headers = list(headers)  # read twice below
    sent = {name.lower() for name, _ in headers}
    chosen = [c for c in candidates if any(name.lower() in sent for name, _ in c[1].set)] or candidates
    setting: dict[str, tuple[str, str]] = {}  # lower name → (name, value), first grant first
    used: dict[str, None] = {}
    for grant, rule in chosen:
        fresh = {name.lower(): (name, value) for name, value in rule.set if name.lower() not in setting}
        if fresh or not rule.set:
            used[grant] = None
        setting.update(fresh)
    removed = {name.lower() for _, rule in chosen for name in rule.remove} - setting.keys()
    out: Headers = []
    for name, value in headers:
        lower = name.lower()
        if lower in removed:
            continue
        if lower in setting:
            if lower in LIST_HEADERS:
                setting[lower] = (name, _merge(value, setting[lower][1]))
            continue
        out.append((name, value))
    out.extend(setting.values())
    return Injected(out, tuple(used), frozenset(setting))


def _merge(existing: str, value: str) -> str:
    items = [item.strip() for item in existing.split(",") if item.strip()]
    for item in value.split(","):
        if item.strip() and item.strip() not in items:
            items.append(item.strip())
    return ",".join(items)


def substitutions_for(grants: Sequence[GrantRules], host: str) -> list[tuple[str, Substitution]]:
    return [(g.grant, s) for g in grants for s in g.substitutions if s.applies_to(host)]


def substitute(text: str, substitutions: Sequence[tuple[str, Substitution]]) -> tuple[str, tuple[str, ...]]:
    """``text`` with each placeholder replaced by its value, and the grants that replaced one."""
    used: dict[str, None] = {}
    for grant, rule in substitutions:
        if rule.placeholder and rule.placeholder in text:
            text = text.replace(rule.placeholder, rule.value)
            used[grant] = None
    return text, tuple(used)


def substitute_bytes(data: bytes, substitutions: Sequence[tuple[str, Substitution]]) -> tuple[bytes, tuple[str, ...]]:
    used: dict[str, None] = {}
    for grant, rule in substitutions:
        placeholder = rule.placeholder.encode()
        if placeholder and placeholder in data:
            data = data.replace(placeholder, rule.value.encode())
            used[grant] = None
    return data, tuple(used)


def grant_secrets(grants: Sequence[GrantRules], host: str) -> tuple[str, ...]:
    """Every form of the credentials that apply to ``host`` (the token, a Basic form, a substituted
    value): what a response from that host must never carry back to the agent."""
    found: dict[str, None] = {}
    for grant in grants:
        if any(i.applies_to(host) for i in grant.injections) or any(s.applies_to(host) for s in grant.substitutions):
            for value in grant.secret_values():
                # As a server may echo it: as sent, percent-encoded (a Location, a query), JSON-escaped.
                found.update(dict.fromkeys((value, quote(value, safe=""), quote(value), json.dumps(value)[1:-1])))
    return tuple(sorted((v for v in found if len(v) >= MIN_SCRUBBED), key=len, reverse=True))


MIN_SCRUBBED = 4  # shorter "secrets" would blot out ordinary text (no real token is this short)


class Scrubber:
    """A streaming filter that replaces each secret with as many ``*`` (the same length: a response's
    Content-Length stays right). A server that echoes a request (Telegram's sendMessage returns the
    text; some APIs reflect headers) would otherwise hand the agent the credential it must not hold.
    A secret split across two chunks is caught: the last bytes of a chunk wait for the next."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.secrets = [s.encode() for s in secrets if s]
        self.pending = b""

    def scrub(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, b"*" * len(secret))
        return data

    def __call__(self, data: bytes) -> bytes:
        if not data:  # the end of the body: what was held back goes now
            out, self.pending = self.scrub(self.pending), b""
            return out
        buffered = self.scrub(self.pending + data)
        # Only what could be the start of a secret waits for the next chunk (usually nothing: an
        # event stream is never held back).
        held = self._partial(buffered)
        self.pending = buffered[len(buffered) - held:] if held else b""
        return buffered[: len(buffered) - held]

    def _partial(self, data: bytes) -> int:
        """The length of the longest end of ``data`` that begins some secret (and is not all of it)."""
        longest = 0
        for secret in self.secrets:
            for size in range(min(len(secret) - 1, len(data)), longest, -1):
                if data.endswith(secret[:size]):
                    longest = size
                    break
        return longest

    def text(self, value: str) -> str:
        return self.scrub(value.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
