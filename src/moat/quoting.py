"""Every value written into another language is quoted for that language, here and nowhere else.

A value moat.yaml gave (a password, a database or user name) may contain any character: spaces,
quotes, backslashes, '$'. Control characters are refused when the file is loaded; these functions
still quote them, so that none of them relies on that.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable


def shell(argv: Iterable[str]) -> str:
    """One line of ``/bin/sh`` that runs ``argv`` exactly (no expansion of any element)."""
    return " ".join(shlex.quote(arg) for arg in argv)


def redis(value: str) -> str:
    """A redis.conf argument: double quotes, with the escapes redis's own parser (sdssplitargs) reads."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\a": "\\a", "\b": "\\b"}
    out = []
    for char in value:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def sql_string(value: str) -> str:
    """A MariaDB string literal (the server runs with its default SQL mode: backslash escapes on)."""
    escapes = {"\\": "\\\\", "'": "\\'", "\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z"}
    return "'" + "".join(escapes.get(char, char) for char in value) + "'"


def sql_name(value: str) -> str:
    """A MariaDB identifier (a database name)."""
    return "`" + value.replace("`", "``") + "`"


def pg_name(value: str) -> str:
    """A PostgreSQL identifier (a database name)."""
    return '"' + value.replace('"', '""') + '"'
