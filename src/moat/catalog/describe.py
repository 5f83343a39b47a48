"""Catalog entries as plain data, for ``moat deps list/info`` (text and ``--json``)."""

from __future__ import annotations

from typing import Any

from moat.catalog import (
    Catalog,
    Custom,
    Download,
    Dynamic,
    Entry,
    GithubBinary,
    GoTool,
    Meta,
    NpmTool,
    Runtime,
    Service,
    Tool,
    UvTool,
)
from moat.catalog.model import DockerCli
from moat.constants import AGENT_ENV_PREFIX


def summary(name: str, entry: Entry | Dynamic) -> dict[str, Any]:
    """One row of ``moat deps list``."""
    if isinstance(entry, Dynamic):
        return {"name": f"{name}:", "type": "dynamic", "default": None, "versions": [],
                "description": entry.description}
    if isinstance(entry, Meta):
        return {"name": name, "type": "meta", "default": None, "versions": [], "description": entry.description}
    return {"name": name, "type": entry.type, "default": entry.default, "versions": list(entry.versions),
            "description": entry.description}


def details(name: str, entry: Entry | Dynamic) -> dict[str, Any]:
    """Everything ``moat deps info NAME`` shows."""
    out = summary(name, entry)
    if isinstance(entry, Service):
        prefix = f"{AGENT_ENV_PREFIX}{entry.env_prefix}_"
        out.update({
            "image": entry.image,
            "port": entry.port,
            "env_prefix": prefix,
            "variables": [f"{prefix}{var}" for var in entry.inject],
            "url": entry.url,
            "credentials": {
                key: {"env": c.env, "default": c.default, "generated": c.generate}
                for key, c in entry.credentials.items()
            },
            "readiness": list(entry.readiness.command),
            "provisions": None if entry.provisions is None else {
                "key": entry.provisions.key,
                "noun": entry.provisions.noun,
                "command": list(entry.provisions.command),
                "cache_path": entry.provisions.cache_path,
            },
            "min_memory_mb": entry.min_memory_mb,
            "data_memory_mb": entry.data_memory_mb,  # added to the minimum when its data is in memory
        })
    elif isinstance(entry, Runtime):
        out["base_image"] = entry.base_image
    elif isinstance(entry, Tool):
        out["apt_package"] = " ".join((entry.apt, *entry.apt_with))
        if entry.link:
            out["binary"] = f"{entry.binary} (Debian's {entry.link})"
    elif isinstance(entry, NpmTool):
        out.update({"npm_package": entry.package, "binary": entry.binary, "requires": list(entry.requires)})
    elif isinstance(entry, GithubBinary):
        out.update({"repository": entry.repo, "asset": entry.asset, "binary": entry.command or name,
                    "verified_by": (f"the release's {entry.checksums}" if entry.checksums else "sha256 pinned by moat"),
                    "requires": list(entry.requires)})
    elif isinstance(entry, Download):
        out.update({"download": entry.url, "binary": entry.command or name,
                    "verified_by": entry.checksums_url.replace("{url}", entry.url), "requires": list(entry.requires)})
    elif isinstance(entry, Custom):
        out.update({"binary": entry.binary, "verified_by": entry.verification, "requires": list(entry.requires)})
    elif isinstance(entry, UvTool):
        out.update({"pypi_package": entry.package, "binary": entry.binary, "requires": list(entry.requires)})
    elif isinstance(entry, GoTool):
        out.update({"go_package": entry.package, "binary": entry.binary, "requires": list(entry.requires)})
    elif isinstance(entry, Meta):
        out["members"] = list(entry.members)
    else:
        out.update({"requires": entry.requires, "usage": f"{name}:NAME[@VERSION]"})
    return out


def all_summaries(catalog: Catalog) -> list[dict[str, Any]]:
    rows = [summary(name, entry) for name, entry in catalog.entries()]
    rows += [summary(prefix, d) for prefix, d in sorted(catalog.data.dynamic.items())]
    if catalog.data.docker is not None:
        rows.append(docker_details(catalog.data.docker, brief=True))
    return rows


def docker_details(cli: DockerCli, *, brief: bool = False) -> dict[str, Any]:
    """``docker:host`` (the one Docker mode moat provides)."""
    out: dict[str, Any] = {"name": "docker:host", "type": "docker", "default": None, "versions": [],
                           "description": cli.description}
    if not brief:
        out.update({"apt_package": " ".join(cli.packages),
                    "verified_by": f"apt, against the signing key of Docker's repository ({cli.apt_base})",
                    "usage": f"the engine's socket at {cli.socket_target}, the agent in its group; not under"
                             " network.policy: strict (the engine is a way around any policy)"})
    return out
