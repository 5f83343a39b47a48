"""Which runtime a run uses, and every runtime a cleanup should look at."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from moat.constants import ENV_RUNTIME, RUNTIMES
from moat.errors import EngineError, UsageError
from moat.plan.identity import Identity
from moat.runtime.base import Runtime

PING_TIMEOUT = 3  # seconds: deciding must not hang on an engine that does not answer


def docker_answers() -> bool:
    from moat.runtime.docker import answers  # noqa: PLC0415 — the SDK loads only where an engine is wanted

    return answers(PING_TIMEOUT)


def choose(requested: str | None, configured: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """(runtime, a note for the user when it was chosen automatically)."""
    explicit = requested or configured or env.get(ENV_RUNTIME, "")
    if explicit:
        if explicit not in RUNTIMES:
            raise UsageError(f"unknown runtime {explicit!r}: available: {', '.join(RUNTIMES)}")
        return explicit, None
    if docker_answers():
        return "docker", None
    return "sandbox", "no container engine answers: using the sandbox runtime (bubblewrap)"


def make(name: str, home: Path, identity: Identity | None = None) -> Runtime:
    """The runtime called ``name``; ``identity`` is who a run's processes act as (the sandbox runs
    them as that user; None: whoever runs moat, enough to inspect and reap)."""
    if name == "kubernetes":
        raise UsageError("the kubernetes runtime runs pods, not containers of this interface (moat.cli.kuberun)")
    if name == "sandbox":
        from moat.runtime.sandbox import SandboxRuntime  # noqa: PLC0415

        return SandboxRuntime(home, identity)
    from moat.runtime.docker import DockerRuntime  # noqa: PLC0415

    return DockerRuntime()


def available(home: Path) -> list[Runtime]:
    """Every runtime that may hold something of moat's: the sandbox always, docker when it answers."""
    found = [make("sandbox", home)]
    if docker_answers():
        with contextlib.suppress(EngineError):
            found.append(make("docker", home))
    return found


def for_run(metadata: Mapping[str, object], home: Path) -> Runtime | None:
    """The runtime a recorded run used, or None when it is not available here."""
    name = str(metadata.get("runtime") or "docker")
    if name == "kubernetes":  # a pod, not containers of a Runtime: see run.kubereap
        return None
    if name == "docker" and not docker_answers():
        return None
    try:
        return make(name, home)
    except EngineError:
        return None

