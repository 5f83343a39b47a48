"""``moat deps list`` and ``moat deps info``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from moat.catalog.model import DepType
from moat.cli.table import echo_table

if TYPE_CHECKING:
    from moat.catalog import Catalog

_TYPES = [*(t.value for t in DepType), "meta"]


@click.group()
def deps() -> None:
    """List and describe the dependencies moat.yaml can declare."""


@deps.command("list")
@click.option("--type", "type_", type=click.Choice(_TYPES), help="Only this kind of dependency.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(type_: str | None, as_json: bool) -> None:
    """Every dependency: runtimes, tools, services and package managers."""
    from moat.catalog import load_catalog
    from moat.catalog.describe import all_summaries

    rows = [r for r in all_summaries(load_catalog()) if type_ in (None, r["type"])]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "TYPE", "DEFAULT", "VERSIONS", "DESCRIPTION")]
    table += [(r["name"], r["type"], r["default"] or "-", ", ".join(r["versions"]) or "-", r["description"])
              for r in rows]
    echo_table(table)


@deps.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(name: str, as_json: bool) -> None:
    """What NAME is, its versions and, for a service, what it gives the agent."""
    from moat.catalog import load_catalog
    from moat.catalog.describe import details

    catalog = load_catalog()
    if name.strip() in ("docker", "docker:host") and catalog.data.docker is not None:
        from moat.catalog.describe import docker_details

        data = docker_details(catalog.data.docker)
    else:
        key, entry = _lookup(name, catalog)
        data = details(key, entry)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print_details(data)


def _lookup(name: str, catalog: Catalog) -> tuple[str, Any]:
    """NAME's catalog entry; ``pip:`` or ``pip:requests`` names the package manager. As ``moat run``
    does, a dependency of the Go moat that this one lacks is named as such, not as unknown."""
    from moat.catalog.deps import unknown_message
    from moat.errors import UsageError

    prefix, colon, _ = name.partition(":")
    if prefix == "docker":  # docker:host is answered before; anything else is what moat run says of it
        from moat.catalog.deps import DependencyError, parse_dependency

        try:
            parse_dependency(name, catalog)
        except DependencyError as exc:
            raise UsageError(exc.message) from None
    if colon:
        manager = catalog.dynamic(prefix)
        if manager is not None:
            return prefix, manager
        supported = ", ".join(f"{p}:" for p in sorted(catalog.data.dynamic))
        if prefix in catalog.data.not_yet_dynamic:
            raise UsageError(f"the '{prefix}:' dependencies of the Go moat are not supported yet;"
                             f" supported prefixes: {supported}")
        raise UsageError(f"unknown dependency prefix '{prefix}:'; supported prefixes: {supported}")
    entry = catalog.get(name)
    if entry is None:
        raise UsageError(unknown_message(name, catalog))
    return name, entry


def _print_details(data: dict[str, Any]) -> None:
    labels = {
        "name": "Name", "type": "Type", "description": "Description", "default": "Default",
        "versions": "Versions", "image": "Image", "port": "Port", "variables": "Agent variables",
        "url": "URL", "credentials": "Credentials", "readiness": "Ready when", "provisions": "Provisions",
        "base_image": "Base image",
        "apt_package": "Debian package", "npm_package": "npm package", "pypi_package": "PyPI package",
        "go_package": "Go package", "repository": "GitHub repository", "asset": "Release asset",
        "download": "Download",
        "verified_by": "Verified against", "binary": "Program",
        "members": "Members", "requires": "Requires", "usage": "Usage",
        "min_memory_mb": "Minimum memory (MB)",
    }
    for key, label in labels.items():
        if key not in data or data[key] in (None, [], ""):
            continue
        value = data[key]
        if isinstance(value, list):
            value = " ".join(value) if key == "readiness" else ", ".join(value)
        elif key == "credentials":
            value = "; ".join(_credential(data["name"], k, c) for k, c in value.items())
        elif key == "provisions":
            value = f"services.{data['name']}.{value['key']}: list of {value['noun']}s, fetched with " \
                    f"`{' '.join(value['command'])}`, cached on the host at {value['cache_path']}"
        click.echo(f"{label + ':':<21}{value}")
    if data["type"] == "service":
        click.echo(f"\nmoat.yaml:\n  dependencies:\n    - {data['name']}@{data['default']}")


def _credential(service: str, name: str, credential: dict[str, Any]) -> str:
    source = "generated per run" if credential["generated"] else f"default {credential['default']}"
    where = f"; override: services.{service}.env.{credential['env']}" if credential["env"] else ""
    return f"{name} ({source}{where})"
