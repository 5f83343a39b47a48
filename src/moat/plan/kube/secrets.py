"""Keeping the run's secrets out of every object but its Secrets.

A Pod's spec is readable by anyone who may list pods, and an exec's command line lands in the API
server's audit log: a service's password is therefore never written into either. Values that hold a
secret go into the run's env Secret and reach the container as variables (``secretKeyRef``); an
argument that holds one becomes ``$(VAR)``, which the kubelet expands; a command moat runs later
(a readiness check) reads the variable inside the container through ``sh``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moat.masking import Masker

SECRET_VARIABLE = "MOAT_SECRET_{}"  # noqa: S105 — a name, not a password; a secret an argument needs, as the container's variable
_KEY_CHARS = re.compile(r"[^-._a-zA-Z0-9]")


def escape_expansion(text: str) -> str:
    """An argument or value taken literally: the kubelet expands ``$(NAME)`` and reduces every ``$$`` to
    ``$``, so each ``$`` is doubled."""
    return text.replace("$", "$$")


@dataclass
class SecretValues:
    """The run's env Secret, filled as the containers are rendered."""

    name: str  # the Secret object's name
    masker: Masker
    data: dict[str, str] = field(default_factory=dict)  # key → value (the real one)

    def holds_secret(self, value: str) -> bool:
        return bool(value) and self.masker.text(value) != value

    def key_for(self, container: str, variable: str, value: str) -> str:
        base = _KEY_CHARS.sub("_", f"{container}.{variable}")[:200]
        key, n = base, 1
        while key in self.data and self.data[key] != value:
            n += 1
            key = f"{base}.{n}"
        self.data[key] = value
        return key

    def env(self, container: str, env: Mapping[str, str]) -> list[dict[str, Any]]:
        """A container's ``env``: plain values as they are, secret ones by reference."""
        out: list[dict[str, Any]] = []
        for variable, value in env.items():
            if self.holds_secret(value):
                ref = {"name": self.name, "key": self.key_for(container, variable, value)}
                out.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
            else:
                out.append({"name": variable, "value": escape_expansion(value)})
        return out

    def args(self, container: str, args: tuple[str, ...], env: list[dict[str, Any]]) -> list[str]:
        """Arguments with every secret replaced by ``$(MOAT_SECRET_n)`` (added to ``env``)."""
        out = []
        for arg in args:
            if not self.holds_secret(arg):
                out.append(escape_expansion(arg))
                continue
            text = escape_expansion(arg)
            for secret in sorted(self.masker.secrets, key=len, reverse=True):
                if secret and secret in arg:
                    text = text.replace(escape_expansion(secret), f"$({self._variable(container, secret, env)})")
            out.append(text)
        return out

    def _variable(self, container: str, secret: str, env: list[dict[str, Any]]) -> str:
        for entry in env:  # a variable that holds exactly this secret already
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and self.data.get(ref["key"]) == secret:
                return str(entry["name"])
        variable = SECRET_VARIABLE.format(sum(1 for e in env if str(e["name"]).startswith("MOAT_SECRET_")))
        env.append({"name": variable, "valueFrom": {"secretKeyRef": {
            "name": self.name, "key": self.key_for(container, variable, secret)}}})
        return variable


def exec_argv(command: tuple[str, ...], env: Mapping[str, str], container_env: list[dict[str, Any]],
              secrets: SecretValues) -> tuple[str, ...]:
    """A command to exec in a container with ``env`` set, where no secret is on the command line: a
    secret value is read from the container's variable that holds it (``values``: the env Secret)."""
    values = secrets.data
    holders = {values[e["valueFrom"]["secretKeyRef"]["key"]]: str(e["name"])
               for e in container_env if "valueFrom" in e and e["valueFrom"]["secretKeyRef"]["key"] in values}
    assignments = []
    for variable, value in env.items():
        if value in holders:
            assignments.append(f'{variable}="${holders[value]}"')
        elif secrets.holds_secret(value):
            raise ValueError(f"{variable} holds a secret the container has no variable for: it cannot be passed"
                             " without writing it")
        else:
            assignments.append(f"{variable}={shlex.quote(value)}")
    if any(secrets.holds_secret(arg) for arg in command):
        raise ValueError("a command argument holds a secret: it cannot be run without writing it")
    if not assignments:
        return command
    return ("sh", "-c", f'export {" ".join(assignments)}; exec "$0" "$@"', *command)
