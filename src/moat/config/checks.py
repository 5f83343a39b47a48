"""moat.yaml's meaning, checked against the catalog: dependencies, and each ``services.<name>``."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from moat.catalog import Catalog, DepType, Service
from moat.catalog.deps import Dependency, resolve_dependencies
from moat.catalog.model import PROVISION_ITEM_RE
from moat.config import langservers
from moat.config.problems import describe
from moat.config.schema import MoatConfig, ServiceOverride
from moat.config.yamldoc import Path, scalar_text
from moat.errors import dotted_path
from moat.suggest import did_you_mean

ITEM_RULE = "letters, digits and . _ : / @ -, starting with a letter or digit"


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    at_key: bool = False


@dataclass
class CheckResult:
    dependencies: list[Dependency] = field(default_factory=list)
    provisions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def check(model: MoatConfig, catalog: Catalog, implied: tuple[str, ...] = ()) -> CheckResult:
    implied = (*implied, *langservers.dependencies(model.language_servers))
    result = _check(model.dependencies, model.services, catalog, implied)
    seen: set[str] = set()
    for index, name in enumerate(model.language_servers):
        if name in seen:
            result.problems.append(Problem(("language_servers", index), f"'{name}' is listed twice"))
        seen.add(name)
    result.problems += check_storage(model)
    return result


# A volume's directory is MOAT_HOME/volumes/<name>/<volume>, a Docker volume moat_<name>_<volume>.
VOLUME_SCOPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENDPOINT_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # a DNS label: <endpoint>.<run>.localhost


def check_storage(model: MoatConfig) -> list[Problem]:
    """mounts and volumes together: one target each, excludes that do not overlap each other or hide a
    volume, and volumes kept under a run name that can name a directory and a Docker volume."""
    problems: list[Problem] = []
    targets: dict[str, Path] = {}

    def claim(target: str, path: Path) -> None:
        if target in targets:
            problems.append(Problem(path, f"{target} is already the target of {dotted_path(targets[target])};"
                                          " each path in the container gets one mount"))
        else:
            targets[target] = path

    for index, mount in enumerate(model.mounts):
        claim(mount.target, ("mounts", index, "target"))
        seen: list[str] = []
        for position, excluded in enumerate(mount.exclude):
            for earlier in seen:
                if excluded == earlier or excluded.startswith(earlier + "/") or earlier.startswith(excluded + "/"):
                    problems.append(Problem(("mounts", index, "exclude", position),
                                            f"'{excluded}' overlaps '{earlier}', excluded already; keep one"))
                    break
            seen.append(excluded)
            hidden = posixpath.join(mount.target, excluded)
            for number, volume in enumerate(model.volumes):
                if volume.target == hidden or volume.target.startswith(hidden + "/"):
                    problems.append(Problem(("mounts", index, "exclude", position),
                                            f"'{excluded}' would hide volumes[{number}] ({volume.target})"))
    for endpoint in model.ports:
        if not ENDPOINT_RE.fullmatch(endpoint):
            problems.append(Problem(("ports", endpoint), f"'{endpoint}' cannot be a host name's label: use lowercase"
                                                         " letters, digits and '-' (e.g. web, api-v2)", at_key=True))
    names: dict[str, int] = {}
    for index, volume in enumerate(model.volumes):
        if volume.target == "/workspace":
            problems.append(Problem(("volumes", index, "target"), "/workspace is the workspace's: a volume cannot"
                                                                  " replace it (workspace.mode: volume gives the"
                                                                  " agent a copy of its own)"))
        claim(volume.target, ("volumes", index, "target"))
        if volume.name in names:
            problems.append(Problem(("volumes", index, "name"),
                                    f"volumes[{names[volume.name]}] is named '{volume.name}' too"))
        names.setdefault(volume.name, index)
    if model.volumes:
        if model.name is None:
            problems.append(Problem(("volumes",), "volumes are kept per run name: set name: (e.g. name: my-agent)"
                                                  " so that the next run finds them", at_key=True))
        elif not VOLUME_SCOPE_RE.fullmatch(model.name):
            problems.append(Problem(("name",), f"{model.name!r} cannot name the volumes' directory and Docker volume:"
                                               " use letters, digits and . _ - (starting with a letter or digit)"))
    return problems


def check_raw(data: dict[str, Any], catalog: Catalog, implied: tuple[str, ...] = ()) -> list[Problem]:
    """What can still be judged when the schema pass failed, so one round reports every problem."""
    dependencies = data.get("dependencies")
    if dependencies is None:
        dependencies = []
    servers = data.get("language_servers")
    if isinstance(servers, list):
        implied = (*implied, *langservers.dependencies([s for s in servers if isinstance(s, str)]))
    if not isinstance(dependencies, list):
        return []  # a schema error already; services cannot be judged without it
    services: dict[str, ServiceOverride] = {}
    raw_services = data.get("services")
    if isinstance(raw_services, dict):
        for name, block in raw_services.items():
            try:
                services[name] = ServiceOverride.model_validate(block if block is not None else {})
            except ValidationError:
                # Its field errors are among the schema errors; everything else about it can still
                # be judged: its name, its extra keys, and the fields that are valid on their own.
                services[name] = _salvage(block)
    return _check(dependencies, services, catalog, implied).problems


def _salvage(block: Any) -> ServiceOverride:
    if not isinstance(block, dict):
        return ServiceOverride.model_construct()
    values: dict[str, Any] = {}
    for key, value in block.items():
        if key not in ServiceOverride.model_fields:
            values[key] = value
            continue
        try:
            values[key] = getattr(ServiceOverride.model_validate({key: value}), key)
        except ValidationError:
            continue
    return ServiceOverride.model_construct(**values)


def _check(dependencies: list[Any], services: dict[str, ServiceOverride], catalog: Catalog,
           implied: tuple[str, ...] = ()) -> CheckResult:
    result = CheckResult()
    deps, result.problems = check_dependencies(dependencies, catalog, implied)
    result.dependencies = deps
    declared = {d.name for d in deps if d.type is DepType.SERVICE}
    for name, override in services.items():
        result.problems += _check_service(name, override, declared, catalog, result)
    return result


def check_dependencies(items: list[Any], catalog: Catalog,
                       implied: tuple[str, ...] = ()) -> tuple[list[Dependency], list[Problem]]:
    # A number such as `- 3.10` is judged (and named) as written.
    texts = [item if isinstance(item, bool) else (scalar_text(item) or item) for item in items]
    deps, problems = resolve_dependencies(texts, catalog, implied)
    return deps, [Problem(("dependencies", i), m) for i, m in sorted(problems.items())]


def _check_service(name: str, override: ServiceOverride, declared: set[str], catalog: Catalog,
                   result: CheckResult) -> list[Problem]:
    path: Path = ("services", name)
    service = catalog.service(name)
    if service is None:
        other = catalog.get(name)
        if other is not None:
            return [Problem(path, f"'{name}' is a {other.type}, not a service; only service"
                                  " dependencies are configured under services", at_key=True)]
        hint = catalog.alias_for(name)
        suggestion = f" — did you mean '{hint}'?" if hint else did_you_mean(name, catalog.service_names())
        return [Problem(path, f"unknown service '{name}'{suggestion}", at_key=True)]
    problems: list[Problem] = []
    if name not in declared:
        problems.append(Problem(
            path, f"configured but '{name}' is not declared in dependencies:"
                  f" add '- {name}' to dependencies (or remove this block)", at_key=True))
    items, item_problems = _provision_items(name, override, service)
    problems += item_problems
    if items:
        result.provisions[name] = items
    if not override.wait and items:
        assert service.provisions is not None
        problems.append(Problem(
            (*path, "wait"), f"wait: false cannot be combined with {service.provisions.key}:"
                             f" {service.provisions.noun}s are fetched once {name} is ready;"
                             f" remove wait: false or the {service.provisions.key} list"))
    in_memory = override.storage == "memory" and service.data_memory_mb
    minimum = service.min_memory_mb + (service.data_memory_mb if in_memory else 0)
    if override.memory is not None and override.memory < minimum:
        why = (f" (its data is kept in memory, storage: memory; with storage: disk {service.min_memory_mb} MB"
               " is enough)") if in_memory else ""
        problems.append(Problem((*path, "memory"), f"{name} needs at least {minimum} MB, got {override.memory}{why}"))
    for credential in service.credentials.values():
        if credential.env and override.env.get(credential.env, None) == "":
            problems.append(Problem(
                (*path, "env", credential.env),
                f"{credential.env} is empty; remove it to let moat choose a value"))
    return problems


def _provision_items(name: str, override: ServiceOverride, service: Service
                     ) -> tuple[tuple[str, ...], list[Problem]]:
    key = service.provisions.key if service.provisions else None
    problems: list[Problem] = []
    items: list[str] = []
    extras: dict[str, Any] = override.model_extra or {}
    for extra, value in extras.items():
        path: Path = ("services", name, extra)
        if extra != key:
            allowed = [*ServiceOverride.model_fields, *([key] if key else [])]
            problems.append(Problem(path, f"unknown key '{extra}'{did_you_mean(extra, allowed)}", at_key=True))
            continue
        assert service.provisions is not None
        noun = service.provisions.noun
        if value is None:
            continue
        if not isinstance(value, list):
            problems.append(Problem(
                path, f"{key} must be a list, e.g. '{key}: [{describe(value).strip(chr(39))}]'"
                      f" — got {describe(value)}"))
            continue
        for index, item in enumerate(value):
            text = None if isinstance(item, bool) else scalar_text(item)
            if text is None or not PROVISION_ITEM_RE.fullmatch(text):
                problems.append(Problem(
                    (*path, index), f"invalid {noun} name {describe(item)}: use {ITEM_RULE}"))
            elif text not in items:
                items.append(text)
    return tuple(items), problems
