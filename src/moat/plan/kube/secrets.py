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

from moat.errors import MoatError
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
        """Arguments as the kubelet will pass them: one that holds a secret, in any form the masker
        knows (raw, URL-encoded, JSON-escaped), becomes ``$(VAR)`` of a variable holding the whole
        argument (added to ``env``), so that no part of it is written into the spec."""
        return [f"$({self._variable(container, arg, env)})" if self.holds_secret(arg) else escape_expansion(arg)
                for arg in args]

    def _variable(self, container: str, value: str, env: list[dict[str, Any]]) -> str:
        for entry in env:  # a variable that holds exactly this value already
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and self.data.get(ref["key"]) == value:
                return str(entry["name"])
        variable = SECRET_VARIABLE.format(sum(1 for e in env if str(e["name"]).startswith("MOAT_SECRET_")))
        env.append({"name": variable, "valueFrom": {"secretKeyRef": {
            "name": self.name, "key": self.key_for(container, variable, value)}}})
        return variable


class UnpassableSecret(MoatError):
    """A command moat would run in a container needs a secret the container holds no variable for."""


def exec_argv(command: tuple[str, ...], env: Mapping[str, str], container_env: list[dict[str, Any]],
              secrets: SecretValues) -> tuple[str, ...]:
    """A command to exec in a container with ``env`` set, where no secret is on the command line: a
    value or an argument that holds a secret is read from the container's variable holding exactly
    it, inside ``sh`` (the exec's command line is in the API server's audit log)."""
    values = secrets.data
    holders = {values[e["valueFrom"]["secretKeyRef"]["key"]]: str(e["name"])
               for e in container_env if "valueFrom" in e and e["valueFrom"]["secretKeyRef"]["key"] in values}

    def word(value: str, what: str) -> str:
        if value in holders:
            return f'"${holders[value]}"'
        if secrets.holds_secret(value):
            raise UnpassableSecret(f"{what} holds a secret the container has no variable for: moat will not"
                                   " write it on a command line")
        return shlex.quote(value)

    if not env and not any(secrets.holds_secret(a) for a in command):
        return command
    assignments = " ".join(f"{variable}={word(value, variable)}" for variable, value in env.items())
    script = (f"export {assignments}; " if assignments else "") + "exec " + " ".join(
        word(arg, f"argument {index} of {command[0]}") for index, arg in enumerate(command))
    return ("sh", "-c", script)
