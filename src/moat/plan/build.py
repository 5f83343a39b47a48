"""Config + catalog + command line → Plan. Pure: no engine, no I/O beyond what the caller passed in."""

from __future__ import annotations

import hashlib
import re
import secrets as secrets_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from moat.agents.model import CONTEXT_ARGUMENT, INIT_VARIABLE, AgentSetup, init_script
from moat.agents.plugins import PluginSet, plugin_set, with_plugins
from moat.catalog import Catalog, DepType
from moat.catalog.deps import DOCKER_HOST, Dependency
from moat.config import langservers
from moat.config.load import Config
from moat.constants import (
    AGENT_CONTAINER_PREFIX,
    AGENT_ENV_RUN_ID,
    AGENT_ENV_RUN_NAME,
    AGENT_IMAGE_REPO,
    CONTAINER_PREFIX,
    ENV_RUNTIME,
    LABEL_HOME,
    LABEL_ROLE,
    LABEL_RUN_ID,
    LABEL_SERVICE,
    NETWORK_PREFIX,
    ROLE_AGENT,
    ROLE_SERVICE,
    RUNTIMES,
    WORKSPACE_MOUNT,
    WORKSPACE_VOLUME_PREFIX,
)
from moat.errors import ConfigError, Located, UsageError
from moat.masking import credential_values
from moat.ownership import home_id
from moat.plan import baseurl, dockerfile, hooks, storage
from moat.plan.buildca import build_ca, mirrors
from moat.plan.containers import HOLD_WRAPPER, ContainerSpec, Mount
from moat.plan.context import CLAUDE_MANAGED_MEMORY, CONTEXT_FILE, CONTEXT_VARIABLE, render_context
from moat.plan.contract import contract, generate_password
from moat.plan.endpoints import Endpoints, forwarder_spec, host_label, routing_port
from moat.plan.grants import clash_message, grant_env, grant_files, proxy_hosts, proxy_spec, relay_spec
from moat.plan.identity import Identity
from moat.plan.model import ImageSpec, Limits, Plan, ProbeSpec, ProvisionSpec, ServiceSpec, SnapshotPolicy
from moat.plan.names import kube_pod_name, new_run_id, random_name
from moat.plan.pod import holder_name, holder_spec, pod_network
from moat.plan.policy import granted_hosts, network_policy
from moat.plan.proxy import (
    CA_DIR,
    CA_FILE_NAME,
    ResolvedGrant,
    Route,
    routes_around,
    static_env,
)
from moat.plan.warm import plan_warm, warm_root, why_cold

if TYPE_CHECKING:  # annotations only: the Keep engine is imported by runs that have a policy
    from moat.config.schema import MoatConfig
    from moat.config.schema import Mount as MountEntry
    from moat.policy.keep import RuleSet

# Variable names as the Go tool takes them (MY-VAR too): anything but '=', spaces and control characters.
_ENV_NAME = re.compile(r"^[^=\s\x00-\x1f\x7f]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: as moat.yaml refuses them
MAX_NAME = 128
DEFAULT_RUNTIME = "docker"
DEFAULT_COMMAND = ("bash",)  # no command given and none in moat.yaml: a shell, as the Go tool does


@dataclass(frozen=True)
class RuntimeTraits:
    """What a runtime's way of running containers means for the plan."""

    # Starting a container is slow (≈0.3 s on Docker): start the agent's while the services start,
    # held until its turn.
    holds_agent: bool
    # Sidecars write bind-mounted host files as root: what they write in the host cache is handed
    # back to the invoking user afterwards.
    sidecars_write_as_root: bool
    # An agent running as uid 0 is confined (a container without capabilities). The sandbox shows
    # the agent the host's own files, which root owns: there uid 0 is never an option.
    contains_root: bool
    # How the agent reaches moat's proxy (see plan.proxy), and where moat's CA is mounted for it (the
    # sandbox shows the host's /etc read-only: nothing can be mounted below it).
    proxy_route: Route
    ca_path: str
    grant_files: str  # where a grant's files are mounted for the agent
    # A run is a pod of containers around a holder (see plan.pod): faster to start, and in strict
    # mode a namespace with loopback only. The sandbox's network namespace is one already.
    pods: bool = False
    # The agent's context file may also go where Claude Code reads managed memory (/etc/claude-code);
    # the sandbox shows the host's /etc, where nothing can be mounted.
    managed_memory: bool = False
    # The agent's image is built from the plan's Dockerfile (the sandbox uses the host's programs).
    builds_images: bool = True
    # The engine keeps named volumes (volumes' type: volume).
    engine_volumes: bool = False
    # Services start from cached initialised templates where the catalog knows how (plan.warm).
    warm_services: bool = True
    # The proxy runs inside the run's pod, on 127.0.0.1:RELAY_PORT (Kubernetes): no relay to plan.
    proxy_in_pod: bool = False


TRAITS = {
    "docker": RuntimeTraits(holds_agent=True, sidecars_write_as_root=True, contains_root=True,
                            proxy_route="gateway", ca_path=f"{CA_DIR}/{CA_FILE_NAME}", grant_files="/etc/moat",
                            pods=True, managed_memory=True, engine_volumes=True),
    "sandbox": RuntimeTraits(holds_agent=False, sidecars_write_as_root=False, contains_root=False,
                             proxy_route="relay", ca_path=f"/tmp/moat-ca/{CA_FILE_NAME}",  # noqa: S108 — its /tmp
                             grant_files="/tmp/moat-grants", builds_images=False),  # noqa: S108 — its /tmp
    # One Pod per run (plan.kube renders it): the containers share the pod's loopback as in the Docker
    # pod, the proxy is a sidecar of it, and nothing of the host (its warm templates) is in the cluster.
    "kubernetes": RuntimeTraits(holds_agent=False, sidecars_write_as_root=False, contains_root=True,
                                proxy_route="relay", ca_path=f"{CA_DIR}/{CA_FILE_NAME}", grant_files="/etc/moat",
                                managed_memory=True, warm_services=False, proxy_in_pod=True),
}


@dataclass(frozen=True)
class RunRequest:
    """What the command line (and the caller's environment) adds to moat.yaml."""

    workspace: Path
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # -e KEY=VALUE (or KEY, taken from host_env)
    name: str | None = None
    runtime: str | None = None
    interactive: bool | None = None
    identity: Identity = field(default_factory=lambda: Identity(1000, 1000))  # plan.identity.agent_identity
    invoker: tuple[int, int] = (1000, 1000)  # the uid and gid moat runs as
    home: Path = field(default_factory=lambda: Path("/nonexistent/moat-home"))  # MOAT_HOME
    scratch_root: Path = Path("/tmp")  # noqa: S108 — where per-run private directories go
    stdin_is_terminal: bool = False  # decides whether the default shell is interactive
    host_env: Mapping[str, str] = field(default_factory=dict)
    grants: tuple[ResolvedGrant, ...] = ()  # moat.yaml's and --grant's, resolved from the credential store
    secrets: Mapping[str, str] = field(default_factory=dict)  # moat.yaml's secrets, resolved (name → value)
    proxy_ca: Path | None = None  # moat's public CA certificate, when the run uses the proxy
    allow_hosts: tuple[str, ...] = ()  # --allow-host: hosts added to network.rules for this run
    agent: AgentSetup | None = None  # moat claude & co.: the agent's command, environment and files
    # docker:host: the engine's Unix socket on this machine and the group that owns it (the caller
    # looks them up only when moat.yaml asks for docker:host).
    docker_socket: tuple[str, int] | None = None
    # claude.llm-gateway's Keep rules, read by the caller (a file in the workspace, or moat.yaml's inline list).
    llm_policy: RuleSet | None = None
    workspace_mode: str | None = None  # --workspace-mode (bind, volume): over moat.yaml's workspace.mode
    # --mount: each as written and parsed (plan.storage.parse_cli_mount), added to moat.yaml's mounts.
    mounts: tuple[tuple[str, MountEntry], ...] = ()


def image_tag(dependency_specs: list[str], dockerfile_text: str, context: Mapping[str, str] | None = None) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(dependency_specs)).encode())
    digest.update(b"\0")
    digest.update(dockerfile_text.encode())
    for name, text in sorted((context or {}).items()):  # what the Dockerfile COPYs is the image too
        digest.update(f"\0{name}\0".encode() + text.encode())
    return f"{AGENT_IMAGE_REPO}:{digest.hexdigest()[:16]}"


def build_plan(config: Config, request: RunRequest, catalog: Catalog, *, run_id: str | None = None,
               new_password: Callable[[], str] = generate_password,
               new_token: Callable[[], str] = lambda: secrets_module.token_hex(32)) -> Plan:
    model = config.model
    run_id = run_id or new_run_id()
    name = _run_name(request.name, model.name)
    runtime = _runtime(request, model.runtime)
    traits = TRAITS[runtime]
    identity = request.identity
    if identity.root and not traits.contains_root:
        raise UsageError(
            f"the {runtime} runtime will not run the agent as root, and {request.workspace} belongs to root",
            hint="The agent runs as the workspace's owner. Give the workspace to a user"
                 f" (chown -R USER {request.workspace}), or use --runtime docker, which runs it as root"
                 " without any capability inside a container.")
    labels = {LABEL_RUN_ID: run_id, LABEL_HOME: home_id(request.home)}
    network = f"{NETWORK_PREFIX}{run_id}"
    scratch = request.scratch_root / f"moat-{run_id}"
    grants, host_ports, base_env, notes = _base_url(config, request.grants, tuple(model.network.host))
    policy = network_policy(model.network, request.allow_hosts, (g.rules for g in grants))
    strict = policy is not None and policy.strict
    # Where the services and the agent are: the pod's holder, or (the sandbox) the run's network.
    members = pod_network(holder_name(run_id)) if traits.pods else network

    base = dockerfile.choose_base_image(config.dependencies, catalog, model.base_image)
    ca = build_ca(request.host_env) if traits.builds_images else None
    builds = config.dependencies if traits.builds_images else ()
    uses_go = any(d.type is DepType.GO or d.manager == "go" for d in builds)
    claude_plugins, plugin_notes = _claude_plugins(config, request.workspace, builds, runtime)
    notes += plugin_notes
    build_hooks = _build_hooks(config, runtime)
    inputs = dockerfile.ImageInputs(base, config.dependencies, identity.uid, identity.gid, build_ca=ca,
                                    **mirrors(request.host_env, releases=any(d.type is DepType.RELEASE for d in builds),
                                              go=uses_go, docker=any(d.type is DepType.DOCKER for d in builds)),
                                    claude_plugins=claude_plugins, post_build_root=build_hooks[0],
                                    post_build=build_hooks[1])
    text = dockerfile.render(inputs, catalog)
    build_context = dockerfile.build_context(inputs) if traits.builds_images else {}
    # Services run in their own images: only what is built into the agent image names its tag.
    specs = sorted(d.spec for d in config.dependencies if d.type is not DepType.SERVICE)
    image = ImageSpec(image_tag(specs, text, build_context), base, text, tuple(specs), identity.uid, identity.gid,
                      base_image_explicit=bool(model.base_image), context=build_context, claude_plugins=claude_plugins)

    services: list[ServiceSpec] = []
    secrets: set[str] = set()
    for dep in config.dependencies:
        if dep.type is not DepType.SERVICE:
            continue
        service_spec, service_secrets = _service_spec(
            config, dep.name, dep.version or "", catalog, new_password,
            _Pod(run_id, members, labels, scratch, request.home, traits, request.invoker, traits.pods))
        services.append(service_spec)
        secrets |= service_secrets

    route: Route = "relay" if strict and traits.pods else traits.proxy_route
    llm_policy = _llm_gateway(config, request)
    proxy = proxy_spec(grants, host_ports, policy, run_id, request.home, request.proxy_ca,
                       traits.ca_path, route, new_token(), llm_policy)
    context_target = f"{traits.grant_files}/{CONTEXT_FILE}"
    env = {AGENT_ENV_RUN_ID: run_id, AGENT_ENV_RUN_NAME: name, CONTEXT_VARIABLE: context_target}
    agent_init = f"{traits.grant_files}/agent-init"  # where an agent's staged home files are mounted
    if request.agent is not None and request.agent.home_files:
        env[INIT_VARIABLE] = agent_init
    for service in services:
        env.update(service.agent_env)
    proxy_env: dict[str, str] = {}
    files = grant_files(grants, scratch, traits.grant_files)
    if proxy is not None:
        placeholders = grant_env(grants, set(env), proxy)
        placeholders.update({variable: target for variable, (_, target, _) in files.items()})
        placeholders.update(base_env)
        proxy_env = static_env(proxy, tuple(s.name for s in services), placeholders)
        env.update(proxy_env)
        secrets |= proxy.registration.secret_values()
    moat_set = set(env)

    def taken(key: str) -> bool:
        # An agent's staged files are copied into $HOME: the agent's home is moat's to choose.
        return key in moat_set or routes_around(key, proxy) or (key == "HOME" and request.agent is not None)

    clashes = [("env", k) for k in model.env if taken(k)]
    clashes += [("secrets", k) for k in model.secrets if taken(k)]
    if clashes:
        raise ConfigError(config.file, [
            Located(where, clash_message(where[1], env), *config.marks.locate(where, prefer_key=True))
            for where in clashes
        ])
    if request.agent is not None:  # under moat.yaml's env and -e: a user's setting wins
        if "HOME" in request.agent.env:  # only moat.yaml's claude.env can hold it
            where = (request.agent.name, "env", "HOME")
            raise ConfigError(config.file, [Located(where, clash_message("HOME", env),
                                                    *config.marks.locate(where, prefer_key=True))])
        env.update({k: v for k, v in request.agent.env.items() if not taken(k)})
    env.update(model.env)
    env.update(request.secrets)  # moat.yaml's secrets, resolved: values the agent needs, masked everywhere
    secrets |= {v for v in request.secrets.values() if v}
    env.update(_cli_env(request, lambda key: taken(key) or key in request.secrets, env))
    # moat's own proxy settings and placeholders are no secrets (GIT_CONFIG_KEY_0 names a git setting).
    secrets |= credential_values({k: v for k, v in env.items() if k not in proxy_env or v != proxy_env[k]})

    context_file = str(scratch / "context" / CONTEXT_FILE)
    context = render_context(
        name, run_id, policy, proxy is not None,
        {g.name: granted_hosts((g.rules,)) for g in grants},
        [variable for g in grants for variable in g.env],
        {s.name: tuple(s.agent_env) for s in services}, host_ports)
    context_mounts = [Mount(context_file, context_target, read_only=True)]
    if traits.managed_memory:
        context_mounts.append(Mount(context_file, CLAUDE_MANAGED_MEMORY, read_only=True))
    if proxy is not None:  # the trace masks the run's other secrets too, should the agent send one
        proxy = replace(proxy, registration=replace(proxy.registration, mask=tuple(sorted(secrets))))
    interactive = model.interactive if request.interactive is None else request.interactive
    command = request.command or tuple(model.command or ())
    agent_files: list[tuple[str, str, str]] = []  # (host file, where the agent sees it, text)
    state_mounts: list[Mount] = []  # host directories the agent keeps its sessions in
    agent_command: tuple[str, ...] = ()  # what the agent's container runs, when it is not ``command``
    links: list[tuple[str, str]] = []
    if request.agent is not None:
        setup = request.agent
        command = tuple(context_target if arg == CONTEXT_ARGUMENT else arg for arg in setup.command)
        if request.interactive is None:
            interactive = setup.interactive
        agent_files = [(str(scratch / "agent-init" / relative.replace("/", "__")), f"{agent_init}/{relative}", text)
                       for relative, text in sorted(setup.home_files.items())]
        state_mounts = [Mount(source, f"{traits.grant_files}/agent-state/{index}", create=True,
                              owner=(identity.uid, identity.gid))
                        for index, (source, _) in enumerate(setup.state_mounts)]
        links = [(mount.target, relative) for mount, (_, relative) in zip(state_mounts, setup.state_mounts,
                                                                           strict=True)]
    if not command:
        command = DEFAULT_COMMAND
        if request.interactive is None and not model.interactive:
            interactive = request.stdin_is_terminal
    to_run = command  # the command, after the pre_run hook when there is one (plan.hooks)
    if model.hooks.pre_run.strip():
        env[hooks.PRE_RUN_VARIABLE] = model.hooks.pre_run
        to_run = hooks.with_pre_run(command)
    if agent_files or links:  # an agent's files, linked into its home before all else
        agent_command = ("/bin/sh", "-c", init_script(links, bool(agent_files)), "moat-agent-init", *to_run)
    limits = Limits(
        memory_mb=model.container.memory or None,
        cpus=model.container.cpus or None,
        dns=tuple(model.container.dns),
        ulimits={k: (v.soft, v.hard) for k, v in sorted(model.container.ulimits.items())},
    )
    published = _endpoints(config, runtime, name, run_id, scratch, request.host_env)
    if published is not None and traits.proxy_in_pod:  # moat's routing proxy reaches no pod in a cluster
        notes += (f"ports ({', '.join(published.ports)}) are not published from a Kubernetes pod: reach them with"
                  f" kubectl port-forward pod/{kube_pod_name(run_id)} PORT",)
        published = None
    if published is not None:
        env.update(published.env())
    held = traits.holds_agent and not interactive
    docker_mounts, docker_groups = _docker_host(config, request, catalog, runtime,
                                                policy is not None or llm_policy is not None)
    if docker_mounts:
        env.setdefault("DOCKER_HOST", f"unix://{docker_mounts[0].target}")
    holder: ContainerSpec | None = None
    if traits.pods:
        holder = holder_spec(run_id, labels, request.home, tuple(s.name for s in services),
                             f"{request.invoker[0]}:{request.invoker[1]}", scratch, strict=strict,
                             network=network, extra_hosts=proxy_hosts(proxy), dns=limits.dns, endpoints=published)
        if strict:
            network = members  # no engine network at all
    own_mounts = (*((Mount(proxy.ca_file, proxy.ca_path, read_only=True),) if proxy else ()),
                  *(Mount(source, target, read_only=True) for source, target, _ in (*files.values(), *agent_files)),
                  *context_mounts, *state_mounts, *docker_mounts)
    mode = request.workspace_mode or model.workspace.mode or "bind"
    copy = storage.workspace_copy(config, request.workspace, f"{WORKSPACE_VOLUME_PREFIX}{run_id}",
                                  request.workspace_mode is not None, traits.engine_volumes,
                                  runtime) if mode == "volume" else None
    agent_mounts = (*storage.agent_mounts(config, request.workspace, request.home, request.host_env, request.mounts,
                                          identity, traits.engine_volumes, runtime, copy), *own_mounts)
    storage.check_overlaps(agent_mounts, own_mounts, config)
    if strict:
        storage.check_strict(agent_mounts, own_mounts, request.docker_socket[0] if request.docker_socket else None)
    agent = ContainerSpec(
        role="agent",
        name=f"{AGENT_CONTAINER_PREFIX}{run_id}",
        image=image.tag,
        labels={**labels, LABEL_ROLE: ROLE_AGENT},
        network=members,
        command=(*HOLD_WRAPPER, *(agent_command or to_run)) if held else tuple(agent_command or to_run),
        env=env,
        working_dir=WORKSPACE_MOUNT,
        mounts=agent_mounts,
        files=(*((source, text) for source, _, text in (*files.values(), *agent_files)), (context_file, context)),
        # In a pod the holder has them (Docker refuses them on a joined container).
        extra_hosts=() if holder is not None else proxy_hosts(proxy),
        user=identity.user,
        # The agent needs no privilege: the container is its boundary. As uid 0 (a root-owned
        # workspace) this leaves it owning root's files in /workspace and nothing more.
        cap_drop=("ALL",),
        no_new_privileges=True,
        memory_mb=limits.memory_mb,
        cpus=limits.cpus,
        dns=() if holder is not None else limits.dns,
        ulimits=limits.ulimits,
        tty=interactive and request.stdin_is_terminal,
        stdin_open=interactive or held,
        init=True,
        held=held,
        scratch=str(scratch / "agent"),
        groups=docker_groups,
    )
    return Plan(
        run_id=run_id,
        name=name,
        workspace=request.workspace,
        config_file=config.file,
        runtime=runtime,
        network=network,
        image=image,
        services=tuple(services),
        command=tuple(command),
        agent=agent,
        identity=identity,
        home=request.home,
        warm_cache=warm_root(request.home, request.host_env),
        scratch=scratch,
        labels=labels,
        interactive=interactive,
        limits=limits,
        secrets=frozenset(secrets),
        proxy=proxy,
        relay=None if holder is not None or traits.proxy_in_pod else relay_spec(proxy, run_id, network, labels,
                                                                                scratch, request.home),
        forwarder=None if published is None or holder is not None else forwarder_spec(
            published, run_id, network, labels, scratch, (identity.uid, identity.gid)),
        holder=holder,
        policy=policy,
        snapshots=_snapshots(model, copy is not None),
        workspace_copy=copy,
        endpoints=published,
        agent_cli=request.agent.name if request.agent else None,
        agent_settings=request.agent.settings if request.agent else {},
        notes=notes,
    )


CLAUDE_CODE = "claude-code"  # the catalog's name for Claude Code's CLI


def _llm_gateway(config: Config, request: RunRequest) -> RuleSet | None:
    gateway = config.model.claude.llm_gateway
    if gateway is None or gateway.policy is None:
        return None
    where = ("claude", "llm-gateway")
    if config.model.claude.base_url is not None:
        message = ("claude.llm-gateway and claude.base_url cannot both be set: the gateway judges"
                   " api.anthropic.com's answers, base_url sends the calls elsewhere")
        raise ConfigError(config.file, [Located(where, message, *config.marks.locate(where, prefer_key=True))])
    if request.llm_policy is None:
        raise UsageError("claude.llm-gateway's policy was not read (a bug in the caller)")
    return request.llm_policy


def _docker_host(config: Config, request: RunRequest, catalog: Catalog, runtime: str, policed: bool,
                 ) -> tuple[tuple[Mount, ...], tuple[int, ...]]:
    """docker:host: the engine's socket mounted for the agent, with the group that may use it."""
    if catalog.data.docker is None or not any(d.type is DepType.DOCKER for d in config.dependencies):
        return (), ()
    written = [i for i, item in enumerate(config.model.dependencies) if str(item).strip() == DOCKER_HOST]
    where: tuple[str | int, ...] = ("dependencies", written[0]) if written else ("dependencies",)
    problem = None
    if not TRAITS[runtime].builds_images:
        problem = f"docker:host needs the docker runtime (the {runtime} runtime has no Docker engine to hand over)"
    elif policed:
        # Whoever holds the socket starts containers on any network, as root on the host: a policy
        # (strict, network.rules, claude.llm-gateway) would hold nothing. Refused, not weakened in silence.
        problem = ("docker:host hands the agent the Docker engine, where it can start containers outside any"
                   " policy: it cannot run with network.policy: strict, network.rules or claude.llm-gateway;"
                   " drop them, or leave Docker out")
    elif request.docker_socket is None:
        problem = "docker:host needs the Docker engine's Unix socket, and none was found"
    if problem:
        raise ConfigError(config.file, [Located(where, problem, *config.marks.locate(where))])
    assert request.docker_socket is not None
    path, gid = request.docker_socket
    return (Mount(path, catalog.data.docker.socket_target),), (gid,)


def _claude_plugins(config: Config, workspace: Path, builds: tuple[Dependency, ...], runtime: str,
                    ) -> tuple[PluginSet | None, tuple[str, ...]]:
    """claude.plugins and claude.marketplaces, for an image that has Claude Code (the Go tool skips
    them otherwise, and so does moat, saying so)."""
    block = config.model.claude
    servers = langservers.plugins(config.model.language_servers)
    if not block.plugins and not block.marketplaces and not servers:
        return None, ()
    if not block.plugins and not block.marketplaces:  # only the language servers' plugins
        if not TRAITS[runtime].builds_images or not any(d.name == CLAUDE_CODE for d in builds):
            return None, ()  # the servers are there for any agent; the plugins are Claude Code's
        return with_plugins(None, servers), ()
    if not TRAITS[runtime].builds_images:
        key = "plugins" if block.plugins else "marketplaces"
        where = ("claude", key)
        message = (f"claude.{key}: Claude Code's plugins are built into the agent image, and the {runtime} runtime"
                   " builds none; use --runtime docker, or remove the key")
        raise ConfigError(config.file, [Located(where, message, *config.marks.locate(where, prefer_key=True))])
    if not any(d.name == CLAUDE_CODE for d in builds):
        return None, (f"claude.plugins and claude.marketplaces are not installed: {CLAUDE_CODE} is not among the"
                      " dependencies (moat claude adds it)",)
    return with_plugins(plugin_set(block, workspace), servers), ()


def _endpoints(config: Config, runtime: str, name: str, run_id: str, scratch: Path,
               host_env: Mapping[str, str]) -> Endpoints | None:
    """moat.yaml's ports: reached through the pod's holder, or the sandbox's forwarder (plan.endpoints)."""
    ports = config.model.ports
    if not ports:
        return None
    return Endpoints(host_label(name, run_id), routing_port(host_env), dict(ports), scratch / "ports")


def _snapshots(model: MoatConfig, volume_workspace: bool) -> SnapshotPolicy | None:
    """moat.yaml's snapshots: on unless disabled (as in the Go tool), with its pre-run trigger (not for
    a volume workspace: the host's tree is its pre-run state, untouched)."""
    config = model.snapshots
    if config.disabled:
        return None
    return SnapshotPolicy(pre_run=not config.triggers.disable_pre_run and not volume_workspace,
                          use_gitignore=not config.exclude.ignore_gitignore,
                          additional=tuple(config.exclude.additional), max_count=config.retention.max_count,
                          delete_initial=config.retention.delete_initial)


def _build_hooks(config: Config, runtime: str) -> tuple[str, str]:
    """hooks.post_build_root and hooks.post_build: layers of the agent's image, which the sandbox does
    not build (it runs the host's programs): there they are refused, never skipped."""
    model = config.model.hooks
    if not TRAITS[runtime].builds_images:
        for key in ("post_build_root", "post_build"):
            if getattr(model, key).strip():
                where = ("hooks", key)
                message = (f"build hooks are layers of the agent's image, and the {runtime} runtime"
                           " builds none (it runs the host's programs); move the step to hooks.pre_run, or use"
                           " --runtime docker")
                raise ConfigError(config.file, [Located(where, message, *config.marks.locate(where, prefer_key=True))])
    return model.post_build_root, model.post_build


def _base_url(config: Config, grants: tuple[ResolvedGrant, ...], host_ports: tuple[int, ...],
              ) -> tuple[tuple[ResolvedGrant, ...], tuple[int, ...], dict[str, str], tuple[str, ...]]:
    """claude.base_url applied: the anthropic grants also for its host, the host's port when it is
    on this machine, and ANTHROPIC_BASE_URL — or, with no such grant, a note that it is unused."""
    url = config.model.claude.base_url
    if url is None:
        return grants, host_ports, {}, ()
    where = ("claude", "base_url")
    try:
        base = baseurl.route(url)
    except baseurl.BaseUrlError as exc:
        problem = Located(where, f"claude.base_url: {exc}", *config.marks.locate(where))
        raise ConfigError(config.file, [problem]) from None
    if not baseurl.uses_base_url(grants):
        # As the Go tool: the endpoint is there to receive the grant's credential.
        return grants, host_ports, {}, (
            "claude.base_url is not used: the run has no claude or anthropic grant to send to it"
            " (add one to grants:, or pass --grant)",)
    ports = (*host_ports, base.host_port) if base.host_port and base.host_port not in host_ports else host_ports
    return baseurl.with_base_url(grants, base), ports, {baseurl.BASE_URL_VARIABLE: base.url}, ()


@dataclass(frozen=True)
class _Pod:
    """What every container of the run shares."""

    run_id: str
    network: str
    labels: Mapping[str, str]
    scratch: Path
    home: Path
    traits: RuntimeTraits
    invoker: tuple[int, int]
    in_pod: bool  # joins a holder's namespace: no name or aliases of its own (the holder's hosts file)


def _service_spec(config: Config, name: str, version: str, catalog: Catalog, new_password: Callable[[], str],
                  pod: _Pod) -> tuple[ServiceSpec, frozenset[str]]:
    service = catalog.service(name)
    assert service is not None
    override = config.model.services.get(name)
    user_env = dict(override.env) if override else {}
    terms = contract(service, name, service.port, user_env, new_password)
    provision = None
    items = config.provisions.get(name, ())
    if service.provisions and items:
        provision = ProvisionSpec(
            items=items,
            timeout=override.provision_timeout if override else 1800,
            recipe=service.provisions,
        )
    image_override = override.image if override else None
    image = image_override or f"{service.image}:{version}"
    cache_path = service.provisions.cache_path if service.provisions else None
    storage = override.storage if override else "memory"
    mounts = (Mount(str(pod.home / "cache" / name), cache_path, create=True),) if cache_path else ()
    container = ContainerSpec(
        role="service",
        name=f"{CONTAINER_PREFIX}{name}-{pod.run_id}",
        image=image,
        labels={**pod.labels, LABEL_ROLE: ROLE_SERVICE, LABEL_SERVICE: name},
        network=pod.network,
        command=terms.command,
        env=terms.container_env,
        service=name,
        hostname=None if pod.in_pod else name,
        aliases=() if pod.in_pod else (name,),
        mounts=mounts,
        tmpfs=service.data_paths if storage == "memory" else (),
        memory_mb=override.memory if override else None,
        scratch=str(pod.scratch / name),
    )
    warm, cold_reason = None, None
    if service.warm is not None and pod.traits.warm_services and (override.warm if override else True):
        if storage != "memory":
            cold_reason = "storage: disk"
        elif override is not None and not override.wait:
            cold_reason = "wait: false (its run's credentials are set as it starts)"
        else:
            cold_reason = why_cold(service, terms.container_env, terms.credentials)
        if cold_reason is None:
            warm = plan_warm(service, name, f"{CONTAINER_PREFIX}warm-{name}-{pod.run_id}", container,
                             terms.credentials, user_env, pod.labels, sandbox=not pod.traits.builds_images)
    spec = ServiceSpec(
        name=name,
        version=version,
        image=image,
        image_overridden=bool(image_override),
        port=service.port,
        container=container,
        probe=ProbeSpec(terms.probe_command, terms.probe_env, service.readiness.expect),
        wait=override.wait if override else True,
        ready_timeout=override.ready_timeout if override else 60,
        cache_path=cache_path,
        hand_back_cache=bool(cache_path) and pod.traits.sidecars_write_as_root and pod.invoker[0] != 0,
        provision=provision,
        agent_env=terms.agent_env,
        warm=warm,
        cold_reason=cold_reason,
    )
    # Every value of a credential variable is a secret, whoever chose it (MYSQL_PASSWORD in
    # services.mysql.env is the user's, not the catalog's).
    secret_values = terms.secrets | frozenset(credential_values(terms.container_env))
    if warm is not None:
        secret_values |= warm.rekey.secrets | {warm.template_password}
    return spec, secret_values


def _run_name(cli_name: str | None, config_name: str | None) -> str:
    """The run's name: any text a person would give it (engine object names use the run id)."""
    if cli_name is not None:
        if not cli_name.strip() or len(cli_name) > MAX_NAME or _CONTROL.search(cli_name):
            raise UsageError(
                f"invalid --name {cli_name!r}: give 1 to {MAX_NAME} characters without control characters"
            )
        return cli_name
    return config_name or random_name()


def _runtime(request: RunRequest, configured: str) -> str:
    choice = request.runtime or configured or request.host_env.get(ENV_RUNTIME) or DEFAULT_RUNTIME
    if choice not in RUNTIMES:
        raise UsageError(f"unknown runtime {choice!r}: available: {', '.join(RUNTIMES)}")
    return choice


def _cli_env(request: RunRequest, taken: Callable[[str], bool], env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in request.env:
        key, sep, value = item.partition("=")
        if not _ENV_NAME.fullmatch(key):
            raise UsageError(f"invalid -e {item.split('=')[0]!r}: expected KEY=VALUE with KEY a variable name")
        if not sep:
            if key not in request.host_env:
                raise UsageError(f"-e {key}: no '=VALUE' given and {key} is not set in your environment")
            value = request.host_env[key]
        if _CONTROL.search(value):
            raise UsageError(f"-e {key}: the value contains a control character; values must be a single line")
        if taken(key):
            raise UsageError(f"-e {key}: {clash_message(key, env)}")
        out[key] = value
    return out
