"""The run's network policy, as planned: moat.yaml's ``network`` section and ``--allow-host``, with the
hosts of the run's grants, which strict mode admits too (the Go tool's docs promise it). Pure."""

from __future__ import annotations

from collections.abc import Iterable

from moat.config.schema import NetworkConfig
from moat.credentials.rules import GrantRules
from moat.errors import UsageError
from moat.plan.model import Plan
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


def policy_caveats(strict: bool, dns: tuple[str, ...], provisions: dict[str, tuple[str, str]]) -> list[str]:
    """What strict mode means for settings that need a way out: said before the run starts.
    ``provisions``: service → (its provisions key, its host cache directory)."""
    if not strict:
        return []
    notes = []
    if dns:
        notes.append("container.dns is not used: a strict run has no resolver to ask (moat's proxy resolves the"
                     " hosts the policy admits)")
    for service, (key, cache) in provisions.items():
        notes.append(f"services.{service}.{key}: a strict run's services have no way out; what is not in the"
                     f" host cache yet ({cache}) cannot be fetched (run once with network.policy: permissive"
                     " to fill it)")
    return notes


def plan_caveats(plan: Plan) -> list[str]:
    strict = plan.policy is not None and plan.policy.strict
    provisions = {s.name: (s.provision.key, str(plan.home / "cache" / s.name)) for s in plan.services
                  if s.provision is not None}
    return [*plan.notes, *policy_caveats(strict, plan.limits.dns, provisions)]
