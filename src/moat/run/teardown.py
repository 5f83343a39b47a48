"""Teardown: the end of every run, whatever ended it.

The run's scope is closed: each container is removed before the network it is on (a sidecar's log
saved first, host-cache files handed back), the agent gets SIGTERM before it goes (or is kept with
``--keep``), cache holds are released once their sidecar is gone, and last a sweep by label removes
anything a creation cut short left behind. Every step runs even when another fails; each failure is
reported and recorded, and the scope says what is left for ``moat clean``.
"""

from __future__ import annotations

from moat.run.events import RunEvents
from moat.run.scope import Scope


def close(scope: Scope, events: RunEvents) -> list[str]:
    """Close the scope; the problems, as messages (already reported and logged)."""
    problems = [f"{p.resource.label()}: {p.message}" for p in scope.close()]
    for problem in problems:
        events.warn(problem)
        events.log(f"teardown: {problem}")
    return problems
