"""npm's credential: one token per registry host, as ~/.npmrc holds them.

The stored credential's token is a JSON object ``{"registry host": "token", …}`` (the Go tool stores
a JSON list in the same place); ``extra["scopes"]`` keeps each host's ``@scope`` names, which are
not secret. The agent gets an .npmrc naming the registries with a placeholder for each token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from moat.credentials.credential import Credential, token_problem
from moat.credentials.hosts import normalize_host, valid_pattern
from moat.errors import MoatError, UsageError

DEFAULT_REGISTRY = "registry.npmjs.org"
PLACEHOLDER = "npm_moatProxyInjected00000000"  # the Go tool's, shaped like an npm token
ENV_USERCONFIG = "NPM_CONFIG_USERCONFIG"  # npm's own way to name another .npmrc
USERCONFIG_VARIABLE = ENV_USERCONFIG  # what points the agent's npm at the .npmrc moat gives it


def npmrc_path(env: Mapping[str, str]) -> Path:
    configured = env.get(ENV_USERCONFIG) or env.get(ENV_USERCONFIG.lower())
    return Path(configured).expanduser() if configured else Path(env.get("HOME") or Path.home()) / ".npmrc"


def parse_npmrc(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(host → token, host → scopes) from .npmrc text. A ``${VAR}`` token is not a token: npm reads
    it from the environment at its own run time, so it is left to NPM_TOKEN and the other sources."""
    tokens: dict[str, str] = {}
    scopes: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("//") and ":_authToken=" in line:
            where, _, token = line[2:].partition(":_authToken=")
            host = normalize_host(where.split("/", 1)[0])
            if ":" in host and not host.startswith("["):
                host = host.rsplit(":", 1)[0]  # //registry.example:8443/: the proxy matches hosts, not ports
            token = token.strip().strip('"')
            # Only a host: a pattern (//*.x.com/) would send the token to every name below it.
            if (host and valid_pattern(host) is None and not host.startswith("*.") and not token.startswith("$")
                    and token_problem(token) is None):
                tokens[host] = token
        elif line.startswith("@") and ":registry=" in line:
            scope, _, url = line.partition(":registry=")
            host = normalize_host(urlsplit(url.strip()).hostname or "")
            if host:
                scopes.setdefault(host, []).append(scope.strip())
    return tokens, scopes


def registries(credential: Credential) -> dict[str, str]:
    """host → token of an npm credential."""
    try:
        data = json.loads(credential.token)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise MoatError("the stored npm credential is not a set of registry tokens",
                        hint="Store it again: `moat revoke npm`, then `moat grant npm`.")
    return data


def credential_token(tokens: Mapping[str, str]) -> str:
    return json.dumps(dict(tokens), sort_keys=True, separators=(",", ":"))


def check_registry(host: str) -> str:
    """A registry given on the command line: a host name, as in //HOST/:_authToken."""
    candidate = normalize_host(urlsplit(host).hostname or "") if "://" in host else normalize_host(host)
    problem = valid_pattern(candidate) if candidate else "a registry host cannot be empty"
    if problem or candidate.startswith("*."):
        raise UsageError(f"--registry {host[:80]!r}: {problem or 'give one host, not a pattern'}",
                         hint="Give the registry's host, e.g. --registry npm.pkg.github.com")
    return candidate


def npmrc_text(credential: Credential) -> str:
    """The .npmrc the agent gets: its registries and scopes, each token a placeholder (the proxy sets
    the real Authorization). npm sends a registry's token only when .npmrc names one for it."""
    scopes = credential.extra.get("scopes") or {}
    lines = []
    for host in sorted(registries(credential)):
        for scope in scopes.get(host, []) if isinstance(scopes, dict) else []:
            lines.append(f"{scope}:registry=https://{host}/")
    lines += [f"//{host}/:_authToken={PLACEHOLDER}" for host in sorted(registries(credential))]
    return "\n".join(lines) + "\n"


def read_npmrc(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    path = npmrc_path(env)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}, {}
    return parse_npmrc(text)
