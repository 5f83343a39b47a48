"""Network rules as moat.yaml writes them, and the decision they give a request (the Go tool's
``network.rules``): host entries, each with an ordered list of ``allow|deny METHOD /path`` rules,
first match wins, then the policy's default (strict: deny; permissive: allow).

Paths are compared as the server will read them: percent-encoded octets decoded, then dot segments
and repeated slashes resolved, so ``/repos/..%2F..%2Fadmin`` is ``/admin`` (a rule cannot be stepped
around by spelling). Standard library only: the proxy daemon imports it.
"""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from moat.credentials.hosts import host_matches, normalize_host, valid_pattern

Action = Literal["allow", "deny"]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "*"})


class RuleError(ValueError):
    """A rule or host entry that does not parse (its message never holds more than the rule)."""


@dataclass(frozen=True)
class Rule:
    action: Action
    method: str  # upper case, or "*"
    pattern: str  # "/repos/*/issues/**"

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method.upper()) and match_path(self.pattern, path)


@dataclass(frozen=True)
class HostRules:
    host: str  # "api.github.com", "*.example.com"
    rules: tuple[Rule, ...] = ()  # none: the whole host is allowed


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str  # for the trace and the refusal's body


def parse_rule(text: str) -> Rule:
    parts = text.split()
    if len(parts) != 3:
        raise RuleError(f"rule {text.strip()[:80]!r} must read 'allow|deny METHOD /path', e.g. 'allow GET /repos/**'")
    action, method, pattern = parts[0].lower(), parts[1].upper(), parts[2]
    if action not in ("allow", "deny"):
        raise RuleError(f"rule {text.strip()[:80]!r}: '{parts[0][:20]}' is neither allow nor deny"
                        + _did_you_mean(action, ("allow", "deny")))
    if method not in METHODS:
        raise RuleError(f"rule {text.strip()[:80]!r}: '{parts[1][:20]}' is not an HTTP method (or *)"
                        + _did_you_mean(method, sorted(METHODS - {"*"})))
    if not pattern.startswith("/"):
        raise RuleError(f"rule {text.strip()[:80]!r}: the path must start with /")
    if any(c in pattern for c in "?#;\\"):
        raise RuleError(f"rule {text.strip()[:80]!r}: a rule matches the path alone; drop the query, fragment,"
                        " ';' parameters and backslashes (a request's are ignored, or read as the server reads"
                        " them)")
    segments = _segments(pattern, decode=False)
    for index, segment in enumerate(segments):
        if "*" in segment and segment not in ("*", "**"):
            raise RuleError(f"rule {text.strip()[:80]!r}: '*' matches a whole path segment ('/a/*/b'), not part"
                            " of one")
        if segment == "**" and index > 0 and segments[index - 1] == "**":
            raise RuleError(f"rule {text.strip()[:80]!r}: '**/**' is '**'")
    return Rule(action, method, pattern)  # type: ignore[arg-type]  # checked above


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_host_rules(host: str, rules: Iterable[str]) -> HostRules:
    problem = valid_pattern(host)
    if problem:
        raise RuleError(problem)
    return HostRules(normalize_host(host), tuple(parse_rule(r) for r in rules))


def match_path(pattern: str, path: str) -> bool:
    """``*`` is one segment, ``**`` any number of them (none at all only when nothing precedes it:
    ``/repos/**`` needs something below /repos, ``/**`` matches every path)."""
    return _match(_segments(pattern, decode=False), _segments(path, decode=True), consumed=False)


def _segments(path: str, *, decode: bool) -> list[str]:
    path = path.split("?", 1)[0].split("#", 1)[0]
    if decode:
        # As the most lenient servers read it: a backslash is a slash (IIS and others), and a
        # segment's ';parameters' are not part of its name (Tomcat, Jetty and Spring read '..;' as '..').
        path = unquote(path).replace("\\", "/")
        path = "/".join(segment.split(";", 1)[0] for segment in path.split("/"))
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    cleaned = "/" + cleaned.lstrip("/")  # normpath keeps a leading "//"
    return [] if cleaned == "/" else cleaned[1:].split("/")


def _match(pattern: Sequence[str], path: Sequence[str], *, consumed: bool) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if not rest:
            return bool(path) or not consumed
        start = 1 if consumed else 0
        return any(_match(rest, path[i:], consumed=True) for i in range(start, len(path) + 1))
    if not path:
        return False
    if head != "*" and head != path[0]:
        return False
    return _match(rest, path[1:], consumed=True)


def evaluate(rules: Sequence[Rule], method: str, path: str) -> Rule | None:
    """The first rule that matches, if any."""
    return next((rule for rule in rules if rule.matches(method, path)), None)


@dataclass(frozen=True)
class NetworkPolicy:
    strict: bool
    hosts: tuple[HostRules, ...] = ()
    granted: tuple[str, ...] = ()  # the run's grants' hosts: reachable in strict mode too

    def decide(self, host: str, method: str, path: str) -> Decision:
        for entry in self.hosts:
            if not host_matches(entry.host, host):
                continue
            if not entry.rules:
                return Decision(True, f"{entry.host} is listed in network.rules")
            rule = evaluate(entry.rules, method, path)
            if rule is not None:
                verb = "allows" if rule.action == "allow" else "denies"
                return Decision(rule.action == "allow",
                                f"'{rule.action} {rule.method} {rule.pattern}' for {entry.host} {verb} it")
            shown = path.partition("?")[0]
            return self._default(host, f"no rule for {entry.host} matches {method.upper()} {shown}")
        if any(host_matches(pattern, host) for pattern in self.granted):
            return Decision(True, f"{normalize_host(host)} is a host of the run's grants")
        return self._default(host, f"{normalize_host(host)} is not in network.rules")

    def admits_host(self, host: str) -> Decision:
        """Whether a tunnel to ``host`` may open at all (its requests are judged one by one inside)."""
        if any(host_matches(entry.host, host) for entry in self.hosts):
            return Decision(True, f"{normalize_host(host)} is listed in network.rules")
        if any(host_matches(pattern, host) for pattern in self.granted):
            return Decision(True, f"{normalize_host(host)} is a host of the run's grants")
        return self._default(host, f"{normalize_host(host)} is not in network.rules")

    def to_json(self) -> dict[str, object]:
        return {"strict": self.strict, "granted": list(self.granted),
                "hosts": [{"host": e.host, "rules": [f"{r.action} {r.method} {r.pattern}" for r in e.rules]}
                          for e in self.hosts]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NetworkPolicy:
        """RuleError (a ValueError) for anything that is not a policy."""
        hosts = data.get("hosts") or []
        granted = data.get("granted") or []
        if not isinstance(hosts, list) or not isinstance(granted, list):
            raise RuleError("a network policy's hosts and granted hosts are lists")
        entries = []
        for entry in hosts:
            if not isinstance(entry, dict) or not isinstance(entry.get("rules", []), list):
                raise RuleError("a network policy's host entry is {host, rules}")
            entries.append(parse_host_rules(str(entry.get("host", "")), [str(r) for r in entry.get("rules", [])]))
        return cls(bool(data.get("strict")), tuple(entries), tuple(str(g) for g in granted))

    def _default(self, host: str, why: str) -> Decision:
        if self.strict:
            return Decision(False, f"{why} (network.policy: strict)")
        return Decision(True, f"{why} (network.policy: permissive)")


def suggested_path(path: str) -> str:
    """A path as a rule could name it: decoded and resolved like a request's, a segment a rule
    cannot spell (a '*', a space or a control character inside it) widened to '*'."""
    segments = _segments(path, decode=True)
    def spellable(segment: str) -> bool:
        return "*" not in segment and not any(c in segment for c in "?#;\\") and segment.isprintable() \
            and not any(c.isspace() for c in segment)

    return "/" + "/".join(s if spellable(s) else "*" for s in segments)


def refusal_text(host: str, method: str, path: str, decision: Decision, *, tunnel: bool) -> str:
    """What an agent reads when the policy refuses it: why, and the moat.yaml lines that would allow
    it (so that it can tell a human)."""
    name = normalize_host(host)
    shown = path.partition("?")[0] or "/"
    if tunnel:
        return (f"Moat: request blocked by network policy.\nHost \"{name}\" is not in the allow list"
                f" ({decision.why}).\nTo allow it, add to moat.yaml:\n\n  network:\n    rules:\n      - {name}\n")
    shown = suggested_path(shown)
    return (f"Moat: request blocked by network policy.\n{method.upper()} {shown} on {name}: {decision.why}.\n"
            f"To allow it, add a rule for the host in moat.yaml:\n\n  network:\n    rules:\n      - {name}:\n"
            f"          - allow {method.upper()} {shown}\n")
