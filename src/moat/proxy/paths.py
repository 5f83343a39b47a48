"""Where the shared proxy keeps its files under ``MOAT_HOME/proxy/``: named once, for the daemon and
its clients alike (standard library only)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from moat.constants import NETWORK_TRACE, RUNS_DIR

PROTOCOL_VERSION = 1  # of the control socket's messages; a daemon speaking another one is restarted
# What the daemon runs: a daemon started by another build of moat (a policy it would not enforce,
# a rule it would read otherwise) is not reused — an old daemon must never fail a new policy open.
_DAEMON_CODE = ("proxy", "policy", "credentials/rules.py", "credentials/hosts.py", "masking.py", "constants.py")


@functools.cache
def daemon_build() -> str:
    """A digest of the source the daemon runs (read once per process; a few dozen small files)."""
    root = Path(__file__).resolve().parent.parent  # the moat package
    digest = hashlib.sha256()
    for entry in _DAEMON_CODE:
        path = root / entry
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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


def trace_path(home: Path, run_id: str) -> Path:
    """Where the proxy serving ``home`` writes a run's trace (a pod's proxy: in its own home)."""
    return home / RUNS_DIR / run_id / NETWORK_TRACE
