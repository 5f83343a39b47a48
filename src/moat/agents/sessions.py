"""Which agent session ``-r`` resumes: a session id as given, or the one moat recorded for a run."""

from __future__ import annotations

import re

from moat.agents.base import Agent
from moat.errors import UsageError

SESSION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def resolve_session(agent: Agent, value: str) -> str:
    if SESSION_ID.fullmatch(value):
        return value.lower()
    raise UsageError(f"-r {value[:80]!r}: not a session id (a UUID such as 3f2b8c1e-0d4a-4e57-9a61-2c7d5e8f9b10)",
                     hint=f"Use -c to continue the workspace's latest {agent.title} session, or give its id"
                          " (the file name of its transcript).")
