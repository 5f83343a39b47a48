"""The run's network policy, as planned: moat.yaml's ``network`` section and ``--allow-host``, with the
hosts of the run's grants, which strict mode admits too (the Go tool's docs promise it). Pure."""

from __future__ import annotations

from collections.abc import Iterable

from moat.config.schema import NetworkConfig
from moat.credentials.rules import GrantRules
from moat.errors import UsageError
from moat.policy.rules import HostRules, NetworkPolicy, RuleError, parse_host_rules


def network_policy(network: NetworkConfig, allow_hosts: Iterable[str],
                   grants: Iterable[GrantRules]) -> NetworkPolicy | None:
    """None when there is nothing to enforce: permissive, no rules (the proxy then sees only what the
    run's grants send through it)."""
    entries: list[HostRules] = [parse_host_rules(entry.host, entry.rules) for entry in network.rules]
    for host in allow_hosts:
        try:
            entries.append(parse_host_rules(host, ()))
        except RuleError as exc:
            hint = "Give a host name or a pattern such as *.example.com, without scheme or port."
            raise UsageError(f"--allow-host {host!r}: {exc}", hint=hint) from None
    strict = network.policy == "strict"
    if not strict and not network.rules:
        return None
    return NetworkPolicy(strict, tuple(entries), granted_hosts(grants))


def granted_hosts(grants: Iterable[GrantRules]) -> tuple[str, ...]:
    """Every host a grant injects into or substitutes for, once, in order."""
    hosts: dict[str, None] = {}
    for grant in grants:
        for injection in grant.injections:
            hosts.update(dict.fromkeys(injection.hosts))
        for substitution in grant.substitutions:
            hosts.update(dict.fromkeys(substitution.hosts))
    return tuple(hosts)


def summary(policy: NetworkPolicy | None) -> str:
    """One line for messages and the agent's context file."""
    if policy is None:
        return "permissive: every host"
    listed = [entry.host for entry in policy.hosts] + list(policy.granted)
    shown = ", ".join(dict.fromkeys(listed)) or "none"
    if policy.strict:
        return f"strict: only {shown}"
    return f"permissive, with rules for {shown}"
