"""Config + catalog + command line → Plan. Pure: no engine, no I/O beyond what the caller passed in."""

from __future__ import annotations

import hashlib
import re
import secrets as secrets_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from moat.catalog import Catalog, DepType
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
    NETWORK_TRACE,
    PROXY_DIR,
    PROXY_SOCKET,
    ROLE_AGENT,
    ROLE_RELAY,
    ROLE_SERVICE,
    RUNS_DIR,
    RUNTIMES,
    WORKSPACE_MOUNT,
)
from moat.credentials.rules import Registration
from moat.errors import ConfigError, Located, UsageError
from moat.masking import credential_values
from moat.ownership import home_id
from moat.plan import dockerfile
from moat.plan.containers import HOLD_WRAPPER, ContainerSpec, Mount
from moat.plan.contract import contract, generate_password
from moat.plan.identity import Identity
from moat.plan.model import ImageSpec, Limits, Plan, ProbeSpec, ProvisionSpec, ServiceSpec
from moat.plan.names import new_run_id, random_name
from moat.plan.proxy import (
    CA_DIR,
    CA_FILE_NAME,
    HOST_GATEWAY,
    PROXY_HOST,
    RELAY_PORT,
    ProxySpec,
    ResolvedGrant,
    Route,
    routes_around,
    static_env,
)

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


TRAITS = {
    "docker": RuntimeTraits(holds_agent=True, sidecars_write_as_root=True, contains_root=True,
                            proxy_route="gateway", ca_path=f"{CA_DIR}/{CA_FILE_NAME}", grant_files="/etc/moat"),
    "sandbox": RuntimeTraits(holds_agent=False, sidecars_write_as_root=False, contains_root=False,
                             proxy_route="relay", ca_path=f"/tmp/moat-ca/{CA_FILE_NAME}",  # noqa: S108 — its /tmp
                             grant_files="/tmp/moat-grants"),  # noqa: S108 — its private /tmp
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


def image_tag(dependency_specs: list[str], dockerfile_text: str) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(dependency_specs)).encode())
    digest.update(b"\0")
    digest.update(dockerfile_text.encode())
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

    base = dockerfile.choose_base_image(config.dependencies, catalog, model.base_image)
    inputs = dockerfile.ImageInputs(base, config.dependencies, identity.uid, identity.gid)
    text = dockerfile.render(inputs, catalog)
    # Services run in their own images: only what is built into the agent image names its tag.
    specs = sorted(d.spec for d in config.dependencies if d.type is not DepType.SERVICE)
    image = ImageSpec(image_tag(specs, text), base, text, tuple(specs), identity.uid, identity.gid,
                      base_image_explicit=bool(model.base_image))

    services: list[ServiceSpec] = []
    secrets: set[str] = set()
    for dep in config.dependencies:
        if dep.type is not DepType.SERVICE:
            continue
        service_spec, service_secrets = _service_spec(
            config, dep.name, dep.version or "", catalog, new_password,
            _Pod(run_id, network, labels, scratch, request.home, traits, request.invoker))
        services.append(service_spec)
        secrets |= service_secrets

    proxy = _proxy_spec(config, request, run_id, traits, new_token)
    env = {AGENT_ENV_RUN_ID: run_id, AGENT_ENV_RUN_NAME: name}
    for service in services:
        env.update(service.agent_env)
    proxy_env: dict[str, str] = {}
    grant_files = _grant_files(request.grants, scratch, traits)
    if proxy is not None:
        grant_env = _grant_env(request.grants, set(env), proxy)
        grant_env.update({variable: target for variable, (_, target, _) in grant_files.items()})
        proxy_env = static_env(proxy, tuple(s.name for s in services), grant_env)
        env.update(proxy_env)
        secrets |= proxy.registration.secret_values()
    moat_set = set(env)

    def taken(key: str) -> bool:
        return key in moat_set or routes_around(key, proxy)

    clashes = [("env", k) for k in model.env if taken(k)]
    clashes += [("secrets", k) for k in model.secrets if taken(k)]
    if clashes:
        raise ConfigError(config.file, [
            Located(where, _clash(where[1], env), *config.marks.locate(where, prefer_key=True))
            for where in clashes
        ])
    env.update(model.env)
    env.update(request.secrets)  # moat.yaml's secrets, resolved: values the agent needs, masked everywhere
    secrets |= {v for v in request.secrets.values() if v}
    env.update(_cli_env(request, lambda key: taken(key) or key in request.secrets, env))
    # moat's own proxy settings and placeholders are no secrets (GIT_CONFIG_KEY_0 names a git setting).
    secrets |= credential_values({k: v for k, v in env.items() if k not in proxy_env or v != proxy_env[k]})

    if proxy is not None:  # the trace masks the run's other secrets too, should the agent send one
        proxy = replace(proxy, registration=replace(proxy.registration, mask=tuple(sorted(secrets))))
    interactive = model.interactive if request.interactive is None else request.interactive
    command = request.command or tuple(model.command or ())
    if not command:
        command = DEFAULT_COMMAND
        if request.interactive is None and not model.interactive:
            interactive = request.stdin_is_terminal
    limits = Limits(
        memory_mb=model.container.memory or None,
        cpus=model.container.cpus or None,
        dns=tuple(model.container.dns),
        ulimits={k: (v.soft, v.hard) for k, v in sorted(model.container.ulimits.items())},
    )
    held = traits.holds_agent and not interactive
    agent = ContainerSpec(
        role="agent",
        name=f"{AGENT_CONTAINER_PREFIX}{run_id}",
        image=image.tag,
        labels={**labels, LABEL_ROLE: ROLE_AGENT},
        network=network,
        command=(*HOLD_WRAPPER, *command) if held else tuple(command),
        env=env,
        working_dir=WORKSPACE_MOUNT,
        mounts=(Mount(str(request.workspace), WORKSPACE_MOUNT),
                *((Mount(proxy.ca_file, proxy.ca_path, read_only=True),) if proxy else ()),
                *(Mount(source, target, read_only=True) for source, target, _ in grant_files.values())),
        files=tuple((source, text) for source, _, text in grant_files.values()),
        extra_hosts=_proxy_hosts(proxy),
        user=identity.user,
        # The agent needs no privilege: the container is its boundary. As uid 0 (a root-owned
        # workspace) this leaves it owning root's files in /workspace and nothing more.
        cap_drop=("ALL",),
        no_new_privileges=True,
        memory_mb=limits.memory_mb,
        cpus=limits.cpus,
        dns=limits.dns,
        ulimits=limits.ulimits,
        tty=interactive and request.stdin_is_terminal,
        stdin_open=interactive or held,
        init=True,
        held=held,
        scratch=str(scratch / "agent"),
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
        scratch=scratch,
        labels=labels,
        interactive=interactive,
        limits=limits,
        secrets=frozenset(secrets),
        proxy=proxy,
        relay=_relay(proxy, run_id, network, labels, scratch, request.home),
    )


def _relay(proxy: ProxySpec | None, run_id: str, network: str, labels: Mapping[str, str], scratch: Path,
           home: Path) -> ContainerSpec | None:
    """The sandbox's way to the proxy: a relay in the run's network, from 127.0.0.1:RELAY_PORT to the
    proxy's Unix socket (the only mount it has)."""
    if proxy is None or proxy.route != "relay":
        return None
    return ContainerSpec(
        role="relay",
        name=f"{CONTAINER_PREFIX}relay-{run_id}",
        image="",
        labels={**labels, LABEL_ROLE: ROLE_RELAY},
        network=network,
        command=("--listen", f"127.0.0.1:{RELAY_PORT}"),
        mounts=(Mount(str(home / PROXY_DIR / PROXY_SOCKET), PROXY_SOCKET, read_only=True),),
        scratch=str(scratch / "relay"),
    )


def _clash(name: str, env: Mapping[str, str]) -> str:
    if name in env:
        return f"{name} is set by moat for the agent; choose another name"
    return f"{name} would send the agent around moat's proxy, which this run's grants need; remove it"


def _proxy_spec(config: Config, request: RunRequest, run_id: str, traits: RuntimeTraits,
                new_token: Callable[[], str]) -> ProxySpec | None:
    """The run goes through moat's proxy when it has grants or opens host ports (network.host)."""
    model = config.model
    if not request.grants and not model.network.host:
        return None
    if request.proxy_ca is None:
        raise UsageError("this run needs moat's proxy, but its CA was not prepared (a bug in the caller)")
    registration = Registration(
        run_id=run_id,
        token=new_token(),
        grants=tuple(g.rules for g in request.grants),
        trace_file=str(request.home / RUNS_DIR / run_id / NETWORK_TRACE),
        host_ports=tuple(model.network.host),
    )
    return ProxySpec(registration, str(request.proxy_ca), traits.ca_path, traits.proxy_route,
                     tuple(g.name for g in request.grants))


def _proxy_hosts(proxy: ProxySpec | None) -> tuple[tuple[str, str], ...]:
    """Docker: moat-proxy and moat-host are the engine's host gateway, where the proxy listens."""
    if proxy is None or proxy.route != "gateway":
        return ()
    return ((PROXY_HOST, "host-gateway"), (HOST_GATEWAY, "host-gateway"))


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
        hostname=name,
        aliases=(name,),
        mounts=mounts,
        tmpfs=service.data_paths if storage == "memory" else (),
        memory_mb=override.memory if override else None,
        scratch=str(pod.scratch / name),
    )
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
    )
    # Every value of a credential variable is a secret, whoever chose it (MYSQL_PASSWORD in
    # services.mysql.env is the user's, not the catalog's).
    return spec, terms.secrets | frozenset(credential_values(terms.container_env))


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


def _grant_files(grants: tuple[ResolvedGrant, ...], scratch: Path, traits: RuntimeTraits
                 ) -> dict[str, tuple[str, str, str]]:
    """variable → (host file, where the agent sees it, its text) for every file a grant gives."""
    out = {}
    for grant in grants:
        for variable, text in grant.files.items():
            name = variable.lower()
            out[variable] = (str(scratch / "grant-files" / name), f"{traits.grant_files}/{name}", text)
    return out


def _grant_env(grants: tuple[ResolvedGrant, ...], moat_set: set[str], proxy: ProxySpec) -> dict[str, str]:
    """The grants' placeholder variables: none may replace one of moat's, open a way around the proxy,
    or be another grant's."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for grant in grants:
        for key, value in {**grant.env, **dict.fromkeys(grant.files, "")}.items():
            if key in moat_set or routes_around(key, proxy) or key in ("PATH", "HOME"):
                raise UsageError(f"grant {grant.name}: its provider sets {key}, which is moat's to set",
                                 hint="Give the provider's container_env another name.")
            if key in owner:
                raise UsageError(f"grants {owner[key]} and {grant.name} both set {key}",
                                 hint="Keep one of them, or give one provider's container_env another name.")
            owner[key] = grant.name
            out[key] = value
    return out


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
            raise UsageError(f"-e {key}: {_clash(key, env)}")
        out[key] = value
    return out
