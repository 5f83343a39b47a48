"""Config + catalog + command line → Plan. Pure: no engine, no I/O beyond what the caller passed in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moat.catalog import Catalog, DepType
from moat.config.load import Config
from moat.constants import (
    AGENT_ENV_RUN_ID,
    AGENT_ENV_RUN_NAME,
    AGENT_IMAGE_REPO,
    CONTAINER_PREFIX,
    ENV_RUNTIME,
    NETWORK_PREFIX,
    RUNTIMES,
)
from moat.errors import ConfigError, Located, UsageError
from moat.plan import dockerfile
from moat.plan.model import ImageSpec, Limits, Plan, ProbeSpec, ProvisionSpec, ServiceSpec
from moat.plan.names import new_run_id, random_name
from moat.services.contract import contract, generate_password

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_RUNTIME = "docker"
FALLBACK_UID = 1000  # the agent's uid when nothing better than root is known


@dataclass(frozen=True)
class RunRequest:
    """What the command line (and the caller's environment) adds to moat.yaml."""

    workspace: Path
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # -e KEY=VALUE (or KEY, taken from host_env)
    name: str | None = None
    runtime: str | None = None
    interactive: bool | None = None
    uid: int = FALLBACK_UID
    gid: int = FALLBACK_UID
    host_env: Mapping[str, str] = field(default_factory=dict)


def agent_identity(invoker: tuple[int, int], workspace_owner: tuple[int, int],
                   host_env: Mapping[str, str]) -> tuple[int, int]:
    """The uid/gid the agent runs as: the invoking user's, so workspace files stay theirs.

    The agent never runs as root: under sudo the real user is used, and a root invoker falls back
    to the workspace's owner (or a plain uid when the workspace is root's too).
    """
    uid, gid = invoker
    if uid != 0:
        return uid, gid
    sudo_uid, sudo_gid = host_env.get("SUDO_UID", ""), host_env.get("SUDO_GID", "")
    if sudo_uid.isdigit() and sudo_gid.isdigit() and int(sudo_uid) != 0:
        return int(sudo_uid), int(sudo_gid)
    if workspace_owner[0] != 0:
        return workspace_owner
    return FALLBACK_UID, FALLBACK_UID


def image_tag(dependency_specs: list[str], dockerfile_text: str) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(dependency_specs)).encode())
    digest.update(b"\0")
    digest.update(dockerfile_text.encode())
    return f"{AGENT_IMAGE_REPO}:{digest.hexdigest()[:16]}"


def build_plan(config: Config, request: RunRequest, catalog: Catalog, *, run_id: str | None = None,
               new_password: Callable[[], str] = generate_password) -> Plan:
    model = config.model
    run_id = run_id or new_run_id()
    name = _run_name(request.name, model.name)
    runtime = _runtime(request, model.runtime)

    base = dockerfile.choose_base_image(config.dependencies, catalog, model.base_image)
    inputs = dockerfile.ImageInputs(base, config.dependencies, request.uid, request.gid)
    text = dockerfile.render(inputs, catalog)
    # Services run in their own images: only what is built into the agent image names its tag.
    specs = sorted(d.spec for d in config.dependencies if d.type is not DepType.SERVICE)
    image = ImageSpec(image_tag(specs, text), base, text, tuple(specs), request.uid, request.gid)

    services: list[ServiceSpec] = []
    secrets: set[str] = set()
    for dep in config.dependencies:
        if dep.type is not DepType.SERVICE:
            continue
        spec, service_secrets = _service_spec(config, dep.name, dep.version or "", run_id, catalog,
                                              new_password)
        services.append(spec)
        secrets |= service_secrets

    env = {AGENT_ENV_RUN_ID: run_id, AGENT_ENV_RUN_NAME: name}
    for service in services:
        env.update(service.agent_env)
    injected = set(env)
    clashes = [k for k in model.env if k in injected]
    if clashes:
        raise ConfigError(config.file, [
            Located(("env", k), f"{k} is set by moat for the agent; choose another name",
                    *config.marks.locate(("env", k), prefer_key=True))
            for k in clashes
        ])
    env.update(model.env)
    env.update(_cli_env(request, injected))

    command = request.command or tuple(model.command or ())
    if not command:
        raise UsageError(
            "nothing to run: give a command after '--' (moat run -- bash) or set command: in moat.yaml"
        )
    limits = Limits(
        memory_mb=model.container.memory or None,
        cpus=model.container.cpus or None,
        dns=tuple(model.container.dns),
        ulimits={k: (v.soft, v.hard) for k, v in sorted(model.container.ulimits.items())},
    )
    return Plan(
        run_id=run_id,
        name=name,
        workspace=request.workspace,
        config_file=config.file,
        runtime=runtime,
        network=f"{NETWORK_PREFIX}{run_id}",
        image=image,
        services=tuple(services),
        env=env,
        command=tuple(command),
        interactive=model.interactive if request.interactive is None else request.interactive,
        limits=limits,
        secrets=frozenset(secrets),
    )


def _service_spec(config: Config, name: str, version: str, run_id: str, catalog: Catalog,
                  new_password: Callable[[], str]) -> tuple[ServiceSpec, frozenset[str]]:
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
    spec = ServiceSpec(
        name=name,
        version=version,
        image=image_override or f"{service.image}:{version}",
        image_overridden=bool(image_override),
        container_name=f"{CONTAINER_PREFIX}{name}-{run_id}",
        port=service.port,
        env=terms.container_env,
        command=terms.command,
        probe=ProbeSpec(terms.probe_command, terms.probe_env, service.readiness.expect),
        wait=override.wait if override else True,
        ready_timeout=override.ready_timeout if override else 60,
        memory_mb=override.memory if override else None,
        tmpfs=service.data_paths if (override.storage if override else "memory") == "memory" else (),
        cache_path=service.provisions.cache_path if service.provisions else None,
        provision=provision,
        agent_env=terms.agent_env,
    )
    return spec, terms.secrets


def _run_name(cli_name: str | None, config_name: str | None) -> str:
    if cli_name is not None:
        if not _RUN_NAME.fullmatch(cli_name):
            raise UsageError(
                f"invalid --name {cli_name!r}: use letters, digits, '.', '-' and '_' (at most 63)"
            )
        return cli_name
    return config_name or random_name()


def _runtime(request: RunRequest, configured: str) -> str:
    choice = request.runtime or configured or request.host_env.get(ENV_RUNTIME) or DEFAULT_RUNTIME
    if choice not in RUNTIMES:
        raise UsageError(f"unknown runtime {choice!r}: available: {', '.join(RUNTIMES)}")
    return choice


def _cli_env(request: RunRequest, injected: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in request.env:
        key, sep, value = item.partition("=")
        if not _ENV_NAME.fullmatch(key):
            raise UsageError(f"invalid -e {item!r}: expected KEY=VALUE with KEY a variable name")
        if not sep:
            if key not in request.host_env:
                raise UsageError(f"-e {key}: no '=VALUE' given and {key} is not set in your environment")
            value = request.host_env[key]
        if key in injected:
            raise UsageError(f"-e {key}: {key} is set by moat for the agent; choose another name")
        out[key] = value
    return out
