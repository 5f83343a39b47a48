"""Where the shared proxy keeps its files under ``MOAT_HOME/proxy/``: named once, for the daemon and
its clients alike (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROTOCOL_VERSION = 1  # of the control socket's messages; a daemon speaking another one is restarted


@dataclass(frozen=True)
class ProxyPaths:
    home: Path

    @property
    def dir(self) -> Path:
        return self.home / "proxy"

    @property
    def control(self) -> Path:
        """JSON lines: register, unregister, listen, status, stop (0600: its owner only)."""
        return self.dir / "control.sock"

    @property
    def relay_dir(self) -> Path:
        """The proxy socket's directory, nothing else in it: what a pod's holder has mounted."""
        return self.dir / "relay"

    @property
    def proxy_socket(self) -> Path:
        """The proxy itself on a Unix socket, for runs in network namespaces of their own."""
        return self.relay_dir / "proxy.sock"

    @property
    def state(self) -> Path:
        """daemon.json: pid, pid_start, port, started_at — written once the daemon is ready."""
        return self.dir / "daemon.json"

    @property
    def log(self) -> Path:
        return self.dir / "daemon.log"

    @property
    def spawn_lock(self) -> Path:
        """Held by a client while it checks for a daemon and starts one: one start at a time."""
        return self.dir / "spawn.lock"

    @property
    def daemon_lock(self) -> Path:
        """Held by the daemon for its whole life: a second one for the same home refuses to start."""
        return self.dir / "daemon.lock"

    @property
    def ca_dir(self) -> Path:
        return self.dir / "ca"
