"""The control socket's messages: one JSON object per line each way (standard library only).

Requests carry ``op`` and its arguments; every reply carries ``ok`` and, when it is false, ``error``
(a sentence for the user) and ``code``:

    {"op": "register", "registration": {...}}   → {"ok": true}
    {"op": "unregister", "run_id": "run_…"}      → {"ok": true, "removed": bool}
    {"op": "listen", "host": "172.17.0.1"}       → {"ok": true, "port": 41234}
    {"op": "status"}                             → {"ok": true, "pid", "port", "listeners", "runs", …}
    {"op": "stop"}                               → {"ok": true}, then the daemon exits

The registration holds the run's secrets: it travels only over this socket (0600, in a 0700
directory), never a file, a command line or an environment.
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE = 4 * 1024 * 1024  # a registration with many grants is a few KiB; anything this big is wrong

OP_REGISTER = "register"
OP_UNREGISTER = "unregister"
OP_LISTEN = "listen"
OP_STATUS = "status"
OP_STOP = "stop"
OPS = (OP_REGISTER, OP_UNREGISTER, OP_LISTEN, OP_STATUS, OP_STOP)

# Why a request failed, for the client to act on (the sentence itself is for the user).
CODE_BAD_REQUEST = "bad-request"
CODE_STOPPING = "stopping"  # the daemon is on its way out: start a new one and ask it instead
CODE_FAILED = "failed"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One message; ValueError when the line is not a JSON object."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("a message is a JSON object")
    return value


def error(message: str, code: str = CODE_FAILED) -> dict[str, Any]:
    return {"ok": False, "error": message, "code": code}
