"""The human-readable rendering of a Plan (``moat run --dry-run``); secrets masked."""

from __future__ import annotations

import shlex

from moat.plan.hooks import PRE_RUN_VARIABLE
from moat.plan.model import Plan


def _proxy_lines(plan: Plan) -> list[str]:
    """The grants, by host and header name: never a value."""
    if plan.proxy is None:
        return []
    shown = plan.to_dict()["proxy"]
    out = ["", f"Proxy (moat's credential proxy, reached at {shown['address']}; CA {plan.proxy.ca_path})"]
    for grant in shown["grants"]:
        for rule in grant["headers"]:
            out.append(f"  grant {grant['grant']:<12} {', '.join(rule['hosts'])}: sets {', '.join(rule['set'])}"
                       + (f", removes {', '.join(rule['remove'])}" if rule["remove"] else ""))
        for rule in grant["substitutions"]:
            out.append(f"  grant {grant['grant']:<12} {', '.join(rule['hosts'])}: its placeholder replaced")
    if shown["host_ports"]:
        out.append(f"  host ports   {', '.join(map(str, shown['host_ports']))} (as moat-host)")
    gateway = plan.proxy.registration.extra.get("llm_policy")
    if gateway:
        rules = gateway["rules"]
        out.append(f"  llm-gateway  api.anthropic.com's answers judged by {len(rules)} Keep rule"
                   f"{'s' if len(rules) != 1 else ''} ({gateway['mode']}): "
                   + ", ".join(f"{r['action']} {r['name']}" for r in rules))
    out.append(f"  trace        {shown['trace_file']}")
    return out


def _policy_lines(plan: Plan) -> list[str]:
    """What the agent may reach, and how the pod makes sure of it."""
    policy = plan.policy
    if policy is None:
        return ["", "Network policy  permissive (every host; network.rules none)"]
    out = ["", f"Network policy  {'strict (only the hosts below)' if policy.strict else 'permissive, with rules'}"]
    for entry in policy.hosts:
        rules = "; ".join(f"{r.action} {r.method} {r.pattern}" for r in entry.rules)
        out.append(f"  {entry.host}" + (f": {rules}" if rules else ""))
    out += [f"  {host} (grant)" for host in policy.granted]
    if plan.holder is not None and plan.holder.network == "none":
        out.append(f"  pod          {plan.holder.name}: no network but loopback; the way out is its relay to"
                   " moat's proxy")
    elif plan.holder is not None:
        out.append(f"  pod          {plan.holder.name}, on the run's network {plan.holder.network} (ordinary"
                   " egress)")
    elif policy.strict:
        out.append("  pod          the run's own network namespace: loopback only; the way out is the relay")
    return out


def render_plan(plan: Plan) -> str:
    mask = plan.masker()
    out = [
        "Run plan (dry run: nothing was started)",
        f"  run        {plan.run_id}  name {plan.name}",
        f"  workspace  {plan.workspace}  " + (
            "(mounted at /workspace)" if plan.workspace_copy is None else
            f"(copied into volume {plan.workspace_copy.volume} at /workspace"
            + (f", without {', '.join(plan.workspace_copy.excluded)}" if plan.workspace_copy.excluded else "")
            + "; the host's tree is not mounted)"),
        f"  config     {plan.config_file or '(none: defaults)'}",
        f"  runtime    {plan.runtime}  network {plan.network}",
        "",
        f"Agent image {plan.image.tag}",
        f"  base          {plan.image.base_image}",
        f"  dependencies  {', '.join(plan.image.dependencies) or '(none)'}",
        f"  user          {_user(plan)}",
    ]
    limits = plan.limits
    if limits.memory_mb or limits.cpus or limits.dns or limits.ulimits:
        parts = []
        if limits.memory_mb:
            parts.append(f"memory {limits.memory_mb} MB")
        if limits.cpus:
            parts.append(f"cpus {limits.cpus:g}")
        if limits.dns:
            parts.append(f"dns {', '.join(limits.dns)}")
        parts += [f"ulimit {k}={s}:{h}" for k, (s, h) in limits.ulimits.items()]
        out.append(f"  limits        {'; '.join(parts)}")
    if plan.endpoints is not None:
        out += ["", f"Endpoints (moat's routing proxy on 127.0.0.1:{plan.endpoints.port}, through the pod's holder)"]
        out += [f"  {name:<10} {plan.endpoints.url(name)} → the agent's port {port}"
                for name, port in sorted(plan.endpoints.ports.items())]
    if plan.services:
        out += ["", "Services (started in parallel on the run network)"]
    for service in plan.services:
        override = "  (image from services." + service.name + ".image)" if service.image_overridden else ""
        out.append(f"  {service.name:<10} {service.image}{override}")
        out.append(f"    container  {service.container_name}  host {service.name}  port {service.port}")
        if service.memory_mb:
            out.append(f"    memory     {service.memory_mb} MB")
        if service.tmpfs:
            out.append(f"    in memory  {', '.join(service.tmpfs)}  (storage: memory)")
        for mount in service.container.mounts:
            out.append(f"    mount      {mount.source} → {mount.target}")
        out.append(f"    env        {_pairs(mask.mapping(service.env))}")
        if service.command:
            out.append(f"    command    {shlex.join(mask.text(a) for a in service.command)}")
        if service.wait:
            out.append(f"    ready when {shlex.join(mask.text(a) for a in service.probe.command)}"
                       f" succeeds (timeout {service.ready_timeout:g}s)")
        else:
            out.append("    ready when (not waited for: wait: false)")
        if service.provision:
            p = service.provision
            out.append(f"    provision  {p.key}: {', '.join(p.items)}  (cached at {p.cache_path},"
                       f" timeout {p.timeout:g}s per {p.noun})")
    agent = plan.agent
    out += ["", f"Agent container {agent.name}"]
    out.append(f"  runs as       {agent.user}" + ("; capabilities dropped: " + ", ".join(agent.cap_drop)
                                                 if agent.cap_drop else "")
               + ("; no-new-privileges" if agent.no_new_privileges else ""))
    for m in agent.mounts:
        out.append(f"  mount         {'volume ' if m.volume or m.workspace_copy else ''}{m.source} → {m.target}"
                   + (" (read-only)" if m.read_only else ""))
        out += [f"    hidden      {m.target.rstrip('/')}/{path} (an empty in-memory directory)" for path in m.excluded]
    if agent.held:
        out.append("  started while the services start, held until its turn (its go line on stdin)")
    out += _proxy_lines(plan)
    out += _policy_lines(plan)
    out += ["", "Agent environment"]
    out += [f"  {k}={v}" for k, v in sorted(mask.mapping(plan.env).items()) if k != PRE_RUN_VARIABLE]
    if PRE_RUN_VARIABLE in plan.env:  # shown as the script it is, never a line that could pass for the plan's
        out += ["", "Pre-run hook (before the command, every start)"]
        out += [f"  | {line}" for line in mask.text(plan.env[PRE_RUN_VARIABLE]).split("\n")]
    if plan.proxy is not None:
        address = plan.to_dict()["proxy"]["url"]
        out += [f"  {k}={address}" for k in ("HTTPS_PROXY", "HTTP_PROXY", "http_proxy", "https_proxy")]
    out += ["", f"Command  {shlex.join(mask.text(a) for a in plan.command)}"
            + ("  (interactive)" if plan.interactive else ""), "", "Dockerfile"]
    out += [f"  {line}" for line in plan.image.dockerfile.rstrip().splitlines()]
    return "\n".join(out)


def _user(plan: Plan) -> str:
    identity = plan.identity
    if identity.root:
        return f"root (uid 0, gid {identity.gid}): the workspace is root's; no capabilities"
    return f"moatuser (uid {identity.uid}, gid {identity.gid})"


def _pairs(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(values.items())) or "(none)"
