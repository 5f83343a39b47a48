"""What the host provides in place of images: service programs (and their versions) and agent tools,
and what the sandbox will not do exactly as the plan asks, said before the run starts."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from typing import Any

from moat.catalog import load_catalog
from moat.errors import EngineError
from moat.plan.identity import Identity
from moat.plan.model import ImageSpec, Plan, ServiceSpec
from moat.runtime.base import ProgressCallback
from moat.runtime.sandbox import cgroups, launch
from moat.runtime.sandbox.services import find_binary


@dataclass(frozen=True)
class HostVersion:
    product: str  # PostgreSQL, MariaDB, Redis, Ollama
    version: str  # 15.14
    path: str


# recipe → (the program that tells its version, product, how to read the version from its output)
_VERSIONS = {
    "postgres": ("postgres", "PostgreSQL", re.compile(r"\(PostgreSQL\)\s+([0-9][0-9.]*)")),
    "mariadb": ("mariadbd", "MariaDB", re.compile(r"Ver\s+([0-9][0-9.]*)")),
    "redis": ("redis-server", "Redis", re.compile(r"v=([0-9][0-9.]*)")),
    "ollama": ("ollama", "Ollama", re.compile(r"version is\s+(\S+)")),
}


@cache
def host_version(recipe_name: str, path: str, identity: Identity) -> HostVersion | None:
    _, product, pattern = _VERSIONS[recipe_name]
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False,
                             cwd="/", start_new_session=True, **launch.as_identity(identity))
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = pattern.search(out.stdout + out.stderr)
    return HostVersion(product, match.group(1), path) if match else None


def _matches(requested: str, actual: str) -> bool:
    return actual == requested or actual.startswith(requested + ".")


def _service_caveats(service: ServiceSpec, identity: Identity) -> list[str]:
    entry = load_catalog().service(service.name)
    recipe = entry.sandbox if entry is not None else None
    if recipe is None:
        return []  # creating it fails with what to do
    try:
        path = find_binary(_VERSIONS[recipe.recipe][0], recipe)
    except EngineError:
        return []  # likewise: the error names the package to install
    found = host_version(recipe.recipe, path, identity)
    actual = f"{found.product} {found.version}" if found else f"whatever version {path} is"
    notes = []
    if service.image_overridden:
        notes.append(f"services.{service.name}.image ({service.image}) is not used: the sandbox runs the"
                     f" host's {actual} ({path})")
    elif (found is None or recipe.recipe != service.name  # mysql is served by MariaDB
          or (service.version and not _matches(service.version, found.version))):
        requested = f"{service.name} {service.version}".strip()
        notes.append(f"{requested} requested: the sandbox runs the host's {actual} ({path})")
    return notes


# A runtime's program (as the catalog names it) → how to read its version from `PROGRAM --version`.
_RUNTIME_VERSION = re.compile(r"(?:Python |v|go)([0-9]+(?:\.[0-9]+)*)")


def _runtime_caveats(image: ImageSpec, identity: Identity) -> list[str]:
    """Runtimes are the host's: one asked for at another version is said, as is a base image."""
    from moat.catalog import Runtime  # noqa: PLC0415

    catalog = load_catalog()
    notes = []
    for spec in image.dependencies:
        name, _, version = spec.partition("@")
        entry = catalog.get(name)
        if not version or not isinstance(entry, Runtime):
            continue
        env = launch.base_env(identity)  # the agent's own PATH: what it will run is what counts
        path = shutil.which(entry.binary, path=env["PATH"])
        if path is None:
            continue  # checking the tools says what to install
        flag = "version" if entry.binary == "go" else "--version"
        try:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10, check=False, cwd="/",
                                 env=env, start_new_session=True, **launch.as_identity(identity))
            said = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            said = ""
        match = _RUNTIME_VERSION.search(said)
        actual = match.group(1) if match else None
        if actual is None or not _matches(version, actual):
            notes.append(f"{name} {version} requested: the sandbox runs the host's {name}"
                         f" {actual or '(version unknown)'} ({path})")
    if image.base_image_explicit:
        notes.append(f"base_image ({image.base_image}) is not used: the sandbox runs the agent on the host's own"
                     " system")
    return notes


def caveats(plan: Plan, identity: Identity, limits: cgroups.Cgroups) -> list[str]:
    notes: list[str] = _runtime_caveats(plan.image, identity)
    for service in plan.services:
        notes += _service_caveats(service, identity)
        why = limits.unenforceable("memory")
        if service.memory_mb and why:
            notes.append(f"services.{service.name}.memory ({service.memory_mb} MB) is not enforced: {why}")
    agent = plan.agent
    for key, value, controller in (("memory", agent.memory_mb, "memory"), ("cpus", agent.cpus, "cpu")):
        why = limits.unenforceable(controller)
        if value and why:
            notes.append(f"container.{key} ({value}) is not enforced: {why}")
    if agent.dns:
        notes.append("container.dns is not used: the sandbox's network has no route out, only loopback")
    if agent.ulimits:
        notes.append(f"container.ulimits ({', '.join(agent.ulimits)}) are not applied by the sandbox runtime")
    return notes


def check_tools(image: ImageSpec, on_line: ProgressCallback) -> None:
    """No image is built: every declared runtime and tool must already be on the host."""
    from moat.catalog import NpmTool  # noqa: PLC0415 — as below
    from moat.catalog.deps import parse_dependency  # noqa: PLC0415 — a cycle otherwise

    catalog = load_catalog()
    missing = []
    for spec in image.dependencies:
        dep = parse_dependency(spec, catalog)
        if dep.manager:
            raise EngineError(f"the sandbox runtime cannot install packages ({spec})",
                              hint="Install it on the host yourself and remove it from moat.yaml, "
                                   "or use --runtime docker.")
        entry: Any = catalog.get(dep.name)
        program = getattr(entry, "binary", None) or dep.name
        found = shutil.which(program)
        if found is None:
            missing.append((program, entry))
        else:
            on_line(f"{dep.spec}: {found}")
    if missing:
        from_npm = [(p, e.package) for p, e in missing if isinstance(e, NpmTool)]
        from_apt = [(p, getattr(e, "apt", None) or getattr(e, "package", p)) for p, e in missing
                    if not isinstance(e, NpmTool)]
        named = ", ".join([*(f"`{p}` (Debian package {pkg})" for p, pkg in from_apt),
                           *(f"`{p}` (npm package {pkg})" for p, pkg in from_npm)])
        how = [f"sudo apt-get install {' '.join(str(pkg) for _, pkg in from_apt)}"] if from_apt else []
        how += [f"npm install --global {' '.join(pkg for _, pkg in from_npm)}"] if from_npm else []
        raise EngineError(f"the sandbox runtime uses the host's tools, and these are missing: {named}",
                          hint=f"Install them ({'; '.join(how)}), or use --runtime docker.")
