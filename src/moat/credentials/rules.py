"""What the proxy does with a run's grants: plain rules with the real values already in them.

The proxy daemon learns nothing about providers: the run resolves each grant into header
injections and token substitutions for named hosts and registers them, with the run's proxy token,
over the daemon's control socket (never a file, a command line or an environment). Standard library
only: the daemon imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moat.credentials.hosts import any_host_matches


@dataclass(frozen=True)
class HeaderInjection:
    """For requests to ``hosts``: drop the ``remove`` headers, then set each of ``set`` (replacing
    whatever the agent sent under that name, a placeholder included)."""

    hosts: tuple[str, ...]
    set: tuple[tuple[str, str], ...]
    remove: tuple[str, ...] = ()

    def applies_to(self, host: str) -> bool:
        return any_host_matches(self.hosts, host)


@dataclass(frozen=True)
class Substitution:
    """For requests to ``hosts``: ``placeholder`` in the path, query, headers or body becomes ``value``
    (the Telegram kind of API, whose token is part of the URL)."""

    hosts: tuple[str, ...]
    placeholder: str
    value: str

    def applies_to(self, host: str) -> bool:
        return any_host_matches(self.hosts, host)


@dataclass(frozen=True)
class GrantRules:
    grant: str  # the grant as the run named it, e.g. "github"; what the trace records
    injections: tuple[HeaderInjection, ...] = ()
    substitutions: tuple[Substitution, ...] = ()
    # Every form of the credential that must be masked where it could show (the token itself, a
    # base64 form in a Basic header): the header values alone would not mask the bare token.
    values: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for injection in self.injections:
            seen.update(dict.fromkeys(injection.hosts))
        for substitution in self.substitutions:
            seen.update(dict.fromkeys(substitution.hosts))
        return tuple(seen)

    def secret_values(self) -> set[str]:
        """Every value that must never be written anywhere (for the masks)."""
        values = set(self.values)
        for rule in self.injections:
            for _, value in rule.set:
                if self.values and not any(v in value for v in self.values if v):
                    continue  # a fixed header (anthropic-beta: oauth-…) is no secret: never masked
                values.add(value)
                scheme, space, credential = value.partition(" ")
                if space and scheme.isalpha():  # "Bearer <token>": the token on its own too
                    values.add(credential)
        values |= {s.value for s in self.substitutions}
        return {v for v in values if v}


@dataclass(frozen=True)
class Registration:
    """One run, as the proxy knows it."""

    run_id: str
    token: str  # the run's proxy password: ``http://moat:<token>@…``
    grants: tuple[GrantRules, ...] = ()
    trace_file: str | None = None  # the run's network.jsonl
    host_ports: tuple[int, ...] = ()  # network.host: the host's ports the agent may reach as moat-host
    extra: dict[str, Any] = field(default_factory=dict)  # room for the network policy
    # Every other secret of the run (its services' passwords, moat.yaml's secrets): masked in the trace
    # too, should the agent send one through the proxy.
    mask: tuple[str, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "token": self.token,
            "grants": [
                {
                    "grant": g.grant,
                    "injections": [{"hosts": list(i.hosts), "set": [list(p) for p in i.set],
                                    "remove": list(i.remove)} for i in g.injections],
                    "substitutions": [{"hosts": list(s.hosts), "placeholder": s.placeholder, "value": s.value}
                                      for s in g.substitutions],
                    "values": list(g.values),
                }
                for g in self.grants
            ],
            "trace_file": self.trace_file,
            "host_ports": list(self.host_ports),
            "extra": self.extra,
            "mask": list(self.mask),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        grants = tuple(
            GrantRules(
                grant=str(g["grant"]),
                injections=tuple(HeaderInjection(tuple(i["hosts"]), tuple((str(n), str(v)) for n, v in i["set"]),
                                                 tuple(i.get("remove", ()))) for i in g.get("injections", ())),
                substitutions=tuple(Substitution(tuple(s["hosts"]), str(s["placeholder"]), str(s["value"]))
                                    for s in g.get("substitutions", ())),
                values=tuple(str(v) for v in g.get("values", ())),
            )
            for g in data.get("grants", ())
        )
        return cls(run_id=str(data["run_id"]), token=str(data["token"]), grants=grants,
                   trace_file=data.get("trace_file"), host_ports=tuple(int(p) for p in data.get("host_ports", ())),
                   extra=dict(data.get("extra") or {}), mask=tuple(str(v) for v in data.get("mask", ())))

    def secret_values(self) -> set[str]:
        values = {self.token, *self.mask}
        for grant in self.grants:
            values |= grant.secret_values()
        return values
