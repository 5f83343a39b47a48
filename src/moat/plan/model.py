"""The run plan: a complete, pure-data description of what a run will start.

Built by ``plan.build`` without touching any engine; executed by a runtime; printed by
``moat run --dry-run``. Secrets stay in the plan (the runtime needs them) and are masked in every
rendering through ``Masker``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from moat.catalog.model import Provisions
from moat.constants import MASK


@dataclass(frozen=True)
class ImageSpec:
    tag: str  # moat/run:<16 hex>
    base_image: str
    dockerfile: str
    dependencies: tuple[str, ...]  # canonical specs, sorted
    uid: int
    gid: int


@dataclass(frozen=True)
class ProbeSpec:
    """A readiness check run inside the service container (argv, never a shell string)."""

    command: tuple[str, ...]
    env: Mapping[str, str]
    expect: str | None


@dataclass(frozen=True)
class ProvisionSpec:
    items: tuple[str, ...]
    timeout: float  # seconds per item, lock waiting included
    recipe: Provisions  # the catalog's how: command, list command, cache path, layout

    @property
    def key(self) -> str:
        return self.recipe.key

    @property
    def noun(self) -> str:
        return self.recipe.noun

    @property
    def command(self) -> tuple[str, ...]:
        return self.recipe.command

    @property
    def cache_path(self) -> str:
        return self.recipe.cache_path


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # also its hostname on the run network
    version: str
    image: str  # full reference, e.g. postgres:17 or the user's override
    image_overridden: bool
    container_name: str
    port: int
    env: Mapping[str, str]  # the container's environment
    command: tuple[str, ...] | None  # None keeps the image's own
    probe: ProbeSpec
    wait: bool
    ready_timeout: float
    memory_mb: int | None
    tmpfs: tuple[str, ...]  # data directories kept in memory
    cache_path: str | None  # where the service's host cache is mounted (catalog), if it has one
    provision: ProvisionSpec | None
    agent_env: Mapping[str, str]  # the MOAT_<PREFIX>_* variables it gives the agent


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None
    cpus: float | None
    dns: tuple[str, ...]
    ulimits: Mapping[str, tuple[int, int]]  # name → (soft, hard)


@dataclass(frozen=True)
class Plan:
    run_id: str
    name: str
    workspace: Path
    config_file: Path | None
    runtime: str
    network: str
    image: ImageSpec
    services: tuple[ServiceSpec, ...]
    env: Mapping[str, str]  # the agent's environment
    command: tuple[str, ...]
    interactive: bool
    limits: Limits
    secrets: frozenset[str] = field(default=frozenset(), repr=False)

    def masker(self) -> Masker:
        return Masker(self.secrets)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data, secrets masked (the ``--dry-run --json`` schema)."""
        mask = self.masker()
        return {
            "run_id": self.run_id,
            "name": self.name,
            "workspace": str(self.workspace),
            "config_file": str(self.config_file) if self.config_file else None,
            "runtime": self.runtime,
            "network": self.network,
            "image": {
                "tag": self.image.tag,
                "base_image": self.image.base_image,
                "dependencies": list(self.image.dependencies),
                "uid": self.image.uid,
                "gid": self.image.gid,
                "dockerfile": self.image.dockerfile,
            },
            "services": [_service_dict(s, mask) for s in self.services],
            "env": mask.mapping(self.env),
            "command": [mask.text(a) for a in self.command],
            "interactive": self.interactive,
            "limits": {
                "memory_mb": self.limits.memory_mb,
                "cpus": self.limits.cpus,
                "dns": list(self.limits.dns),
                "ulimits": {k: {"soft": s, "hard": h} for k, (s, h) in self.limits.ulimits.items()},
            },
        }


def _service_dict(service: ServiceSpec, mask: Masker) -> dict[str, Any]:
    provision = service.provision
    return {
        "name": service.name,
        "version": service.version,
        "image": service.image,
        "image_overridden": service.image_overridden,
        "container_name": service.container_name,
        "host": service.name,
        "port": service.port,
        "env": mask.mapping(service.env),
        "command": [mask.text(a) for a in service.command] if service.command else None,
        "readiness": {
            "command": [mask.text(a) for a in service.probe.command],
            "env": mask.mapping(service.probe.env),
            "expect": service.probe.expect,
            "wait": service.wait,
            "timeout_seconds": service.ready_timeout,
        },
        "memory_mb": service.memory_mb,
        "tmpfs": list(service.tmpfs),
        "cache_path": service.cache_path,
        "provision": None if provision is None else {
            "key": provision.key,
            "items": list(provision.items),
            "command": list(provision.command),
            "cache_path": provision.cache_path,
            "timeout_seconds": provision.timeout,
        },
        "agent_env": mask.mapping(service.agent_env),
    }


class Masker:
    """Replaces every secret with ``****``: raw, percent-encoded (as in URLs) and JSON-escaped.

    A short secret (a user's ``POSTGRES_PASSWORD: pw``) is masked only where it stands as a word
    of its own: masking every "pw" inside "pwd" would garble the text and protect nothing.
    """

    WHOLE_WORD_BELOW = 6

    def __init__(self, secrets: frozenset[str]) -> None:
        present = [s for s in secrets if s]
        forms = {*present, *(quote(s, safe="") for s in present), *(json.dumps(s)[1:-1] for s in present)}
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._forms = [f for f in ordered if len(f) >= self.WHOLE_WORD_BELOW]
        short = [f for f in ordered if len(f) < self.WHOLE_WORD_BELOW]
        self._short = re.compile("|".join(rf"(?<![\w]){re.escape(f)}(?![\w])" for f in short)) if short else None

    def text(self, value: str) -> str:
        for form in self._forms:
            if form in value:
                value = value.replace(form, MASK)
        if self._short is not None:
            value = self._short.sub(MASK, value)
        return value

    def mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        return {k: self.text(v) for k, v in values.items()}
