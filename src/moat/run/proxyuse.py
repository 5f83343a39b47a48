"""The run's side of moat's credential proxy: the few calls a run makes, behind a small interface so
that orchestration is tested without a daemon.

A run registers its grants (and its proxy token) before its agent is created and unregisters them in
teardown: a resource of its scope like any container, handed to a detached run's supervisor with
the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from moat.credentials.rules import Registration


class ProxyClient(Protocol):
    def ensure_running(self) -> None:
        """The shared proxy of this MOAT_HOME answers (started now if it did not)."""

    def listen(self, host: str) -> int:
        """The port the proxy listens on at ``host`` (an address of this machine), listening there now
        if it did not."""

    def register(self, registration: Registration) -> None: ...

    def unregister(self, run_id: str) -> None:
        """Idempotent; a proxy that is gone has nothing of the run left."""


class DaemonProxy:
    """The real one: the shared daemon under ``MOAT_HOME/proxy/``."""

    def __init__(self, home: Path) -> None:
        self.home = home

    # moat.proxy.client is imported only by runs with grants.
    def ensure_running(self) -> None:
        from moat.proxy.client import ensure_running  # noqa: PLC0415

        ensure_running(self.home)

    def listen(self, host: str) -> int:
        from moat.proxy.client import listen  # noqa: PLC0415

        return listen(self.home, host)

    def register(self, registration: Registration) -> None:
        from moat.proxy.client import register  # noqa: PLC0415

        register(self.home, registration)

    def unregister(self, run_id: str) -> None:
        from moat.proxy.client import unregister  # noqa: PLC0415

        unregister(self.home, run_id)
