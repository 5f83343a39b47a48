"""The agent's context file: what its sandbox is, in a few lines it reads before it starts working
(the Go tool's moat-context.md): the network policy, its grants, its services and their variables.

An agent told its limits up front does not waste its turns finding them, and can tell a human what to
change. Names and hosts only: never a value (the file is written to disk and mounted for the agent).
Pure: rendered from the plan's parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from moat.policy.rules import NetworkPolicy

CONTEXT_FILE = "moat-context.md"
CONTEXT_VARIABLE = "MOAT_CONTEXT"  # where the agent finds it
# Claude Code reads this file as managed memory on Linux, wherever it runs: the context reaches it
# without a write to the user's workspace or its home.
CLAUDE_MANAGED_MEMORY = "/etc/claude-code/CLAUDE.md"


def render_context(name: str, run_id: str, policy: NetworkPolicy | None, proxied: bool,
                   grants: Mapping[str, Sequence[str]], placeholders: Sequence[str],
                   services: Mapping[str, Sequence[str]], host_ports: Sequence[int]) -> str:
    """``grants``: name → hosts; ``placeholders``: the variables that hold them; ``services``: name →
    its MOAT_* variables."""
    out = [
        "# Your sandbox (moat)",
        "",
        f"You are running inside moat run \"{name}\" ({run_id}): a container whose workspace is /workspace.",
        "Everything here but /workspace goes away when the run ends.",
        "",
        "## Network",
        "",
    ]
    if policy is not None and policy.strict:
        hosts = [e.host for e in policy.hosts] + [h for h in policy.granted if h not in {e.host for e in policy.hosts}]
        out += [
            "Policy: **strict**. Only these hosts can be reached, over HTTP(S) through moat's proxy"
            " (HTTPS_PROXY is set; there is no other route, no DNS, no raw TCP or UDP out):",
            "",
            *(f"- {host}" + _rules(policy, host) for host in hosts),
        ]
        if not hosts:
            out.append("- (none)")
    elif policy is not None:
        out += ["Policy: permissive, with rules for some hosts (requests through moat's proxy are checked):", ""]
        out += [f"- {entry.host}" + _rules(policy, entry.host) for entry in policy.hosts]
    else:
        out.append("Policy: permissive: every host can be reached"
                   + (" (HTTP(S) goes through moat's proxy)." if proxied else "."))
    if policy is not None:
        out += [
            "",
            "A request the policy refuses gets HTTP 407 with the header `X-Moat-Blocked`; its body names the"
            " moat.yaml lines that would allow it. Do not try to get around it: tell the user what to add.",
        ]
    if host_ports:
        out += ["", "The host's own ports reachable as `moat-host` (MOAT_HOST_GATEWAY): "
                + ", ".join(str(p) for p in host_ports) + ". No other port of the host is."]
    if grants:
        out += ["", "## Credentials", "",
                "moat's proxy adds these credentials to requests for their hosts; you never hold them:", ""]
        out += [f"- {grant}: {', '.join(hosts) or '(its hosts)'}" for grant, hosts in grants.items()]
        if placeholders:
            out += ["", "These variables hold placeholders, not credentials (the proxy swaps them on the way out):"
                    f" {', '.join(sorted(placeholders))}."]
    if services:
        out += ["", "## Services", "", "Running beside you, ready, reachable by name:", ""]
        out += [f"- {service}: {', '.join(sorted(variables))}" for service, variables in services.items()]
    return "\n".join(out) + "\n"


def _rules(policy: NetworkPolicy, host: str) -> str:
    for entry in policy.hosts:
        if entry.host == host and entry.rules:
            return " (" + "; ".join(f"{r.action} {r.method} {r.pattern}" for r in entry.rules) + ", first match wins)"
    return ""
