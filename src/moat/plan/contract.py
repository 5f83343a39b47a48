"""A service's contract with the agent: credentials, container environment, probe and MOAT_* variables.

Pure functions over catalog entries. A user override in ``services.<n>.env`` of a credential's
variable (``POSTGRES_USER``, ``POSTGRES_DB``, ``MYSQL_DATABASE``, a password variable) is reflected
everywhere the credential appears: the container, the readiness check, the injected variables and
the URL.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from moat.catalog import Service
from moat.constants import AGENT_ENV_PREFIX

PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def generate_password() -> str:
    """32 characters from [A-Za-z0-9], from the OS's cryptographic source."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def fill(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{name}`` placeholders; an unknown name is a catalog bug, so it raises KeyError."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def fill_all(templates: tuple[str, ...], values: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(fill(t, values) for t in templates)


@dataclass(frozen=True)
class Contract:
    credentials: dict[str, str]  # user / password / db as the service will really have them
    secrets: frozenset[str]  # values that must never be shown
    container_env: dict[str, str]
    command: tuple[str, ...] | None
    probe_command: tuple[str, ...]
    probe_env: dict[str, str]
    agent_env: dict[str, str]
    url: str


def resolve_credentials(service: Service, user_env: Mapping[str, str],
                        new_password: Callable[[], str] = generate_password
                        ) -> tuple[dict[str, str], frozenset[str]]:
    """Each credential's value: the user's override, else a generated secret, else its default."""
    values: dict[str, str] = {}
    secret_values: set[str] = set()
    for name, credential in service.credentials.items():
        if credential.env and credential.env in user_env:
            value = user_env[credential.env]
        elif credential.generate:
            value = new_password()
        else:
            assert credential.default is not None
            value = fill(credential.default, values)
        values[name] = value
        if credential.generate:
            secret_values.add(value)
    return values, frozenset(secret_values)


def build_url(template: str, values: Mapping[str, str]) -> str:
    """The connection URL, with every component percent-encoded (passwords may contain '@', '/')."""
    return fill(template, {k: quote(v, safe="") for k, v in values.items()})


def contract(service: Service, name: str, port: int, user_env: Mapping[str, str],
             new_password: Callable[[], str] = generate_password) -> Contract:
    credentials, secret_values = resolve_credentials(service, user_env, new_password)
    values = {**credentials, "host": name, "port": str(port)}
    container_env = {k: fill(v, values) for k, v in service.env.items()}
    for cred_name, credential in service.credentials.items():
        if credential.env:
            container_env[credential.env] = credentials[cred_name]
    container_env.update(user_env)  # the user's word is final, as in the Go moat
    for key, append in service.env_append.items():  # what keeps the service closed (see catalog)
        chosen = user_env.get(key, "")
        if any(name in user_env for name in append.unless_set) or any(o in chosen for o in append.unless_contains):
            continue  # the user chose how it authenticates
        container_env[key] = f"{container_env.get(key, '')} {fill(append.words, values)}".strip()
    url = build_url(service.url, values)
    prefix = f"{AGENT_ENV_PREFIX}{service.env_prefix}_"
    available = {"HOST": name, "PORT": str(port), "URL": url,
                 **{k.upper(): v for k, v in credentials.items()}}
    agent_env = {f"{prefix}{var}": available[var] for var in service.inject}
    return Contract(
        credentials=credentials,
        secrets=secret_values,
        container_env=container_env,
        command=fill_all(service.command, values) if service.command else None,
        probe_command=fill_all(service.readiness.command, values),
        probe_env={k: fill(v, values) for k, v in service.readiness.env.items()},
        agent_env=agent_env,
        url=url,
    )
