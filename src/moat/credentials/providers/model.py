"""A credential provider as moat uses it: which hosts its token is for, how the proxy puts it into
requests, where moat finds the token, and what the agent sees instead of it."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# The container variable of a header-injecting provider carries this: the proxy replaces the whole
# header, so the value only has to be there (the Go tool's ProxyInjectedPlaceholder).
PROXY_INJECTED = "moat-proxy-injected"
# In ``container_env``, where the run's substitution placeholder goes (made per run by rules_for).
SUBSTITUTED = "${placeholder}"
# In a validation URL or header, where the real token goes.
TOKEN = "${token}"  # noqa: S105 — a template marker, not a password

Kind = Literal["token", "npm"]  # npm: one token per registry, read from .npmrc
Origin = Literal["builtin", "custom"]


@dataclass(frozen=True)
class HeaderRule:
    """One header the proxy sets for requests to ``hosts``."""

    hosts: tuple[str, ...]
    header: str
    prefix: str = ""
    basic_user: str | None = None  # value = prefix + base64("<basic_user>:<token>") (git smart-HTTP)
    value: str | None = None  # a fixed value instead of the token (anthropic-beta for OAuth)
    remove: tuple[str, ...] = ()  # headers dropped from these requests (x-api-key for OAuth)

    def render(self, token: str) -> str:
        if self.value is not None:
            return self.value
        if self.basic_user is not None:
            return self.prefix + base64.b64encode(f"{self.basic_user}:{token}".encode()).decode()
        return self.prefix + token


@dataclass(frozen=True)
class TokenCheck:
    """A request that succeeds (2xx) only with a valid token: ``moat grant`` makes it before storing."""

    url: str  # may hold ${token} (Telegram's /bot<token>/getMe)
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()  # values may hold ${token}


@dataclass(frozen=True)
class Provider:
    name: str
    description: str
    hosts: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    headers: tuple[HeaderRule, ...] = ()  # none: token substitution on ``hosts``
    source_env: tuple[str, ...] = ()  # variables that may hold the token, in order
    source_cli: tuple[str, ...] = ()  # a command that prints it (``gh auth token``)
    container_env: Mapping[str, str] = field(default_factory=dict)  # NAME → placeholder (or SUBSTITUTED)
    validate: TokenCheck | None = None
    prompt: str = ""
    kind: Kind = "token"
    credential_type: str = "token"  # how listings name it: token, api-key, oauth, registry
    origin: Origin = "builtin"
    file: Path | None = None

    @property
    def substitution(self) -> bool:
        """Whether the proxy replaces a placeholder with the token instead of setting a header."""
        return self.kind == "token" and not self.headers

    @property
    def how(self) -> str:
        """How the token reaches requests, in a few words (for ``moat grant providers``)."""
        if self.kind == "npm":
            return "Authorization per npm registry"
        if self.substitution:
            return "placeholder substitution"
        return ", ".join(dict.fromkeys(rule.header for rule in self.headers if rule.value is None))
