"""moat.yaml's ``ports``: endpoints reached from the host at ``https://<endpoint>.<host>.localhost:<port>``
through moat's routing proxy (see run.router), and told to the agent as ``MOAT_URL_<NAME>``.

Docker: the pod's holder reaches each port, a socat per endpoint listening on a Unix socket in the
run's private scratch directory (bound into the holder) and connecting to 127.0.0.1:<port> in the
pod's namespace. The sandbox: moat's relay (``--forward``) does the same inside the run's network
namespace, as the agent's user. The routing proxy connects to that socket: nothing is published on
the host's network, no container address is needed, and a strict run keeps no route out (an inbound
Unix socket is no way out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moat.constants import CONTAINER_PREFIX, LABEL_ROLE, ROLE_RELAY
from moat.errors import UsageError
from moat.plan.containers import ContainerSpec, Mount

ENV_PORT = "MOAT_PROXY_PORT"  # the routing proxy's port, as the Go tool names it
DEFAULT_PORT = 8080
SOCKETS_MOUNT = "/run/moat-ports"  # the endpoints' sockets' directory, inside the holder
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def host_label(name: str, run_id: str) -> str:
    """The run's name as a DNS label (lowercase letters, digits and '-'), else its id's."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label if label and DNS_LABEL.fullmatch(label) else run_id.replace("_", "-")


def routing_port(env: Mapping[str, str]) -> int:
    text = env.get(ENV_PORT, "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"{ENV_PORT}={text[:20]!r} is not a port (1-65535)")
    return int(text)


@dataclass(frozen=True)
class Endpoints:
    host: str  # the run's DNS label
    port: int  # the routing proxy's port on this machine
    ports: Mapping[str, int]  # endpoint → the agent's port
    sockets: Path  # the directory of the endpoints' Unix sockets (the run's scratch)

    def url(self, endpoint: str) -> str:
        return f"https://{endpoint}.{self.host}.localhost:{self.port}"

    def env(self) -> dict[str, str]:
        return {f"MOAT_URL_{re.sub(r'[^A-Z0-9]', '_', name.upper())}": self.url(name) for name in self.ports}

    def socket(self, endpoint: str) -> Path:
        return self.sockets / f"{endpoint}.sock"

    def forwarders(self) -> str:
        """The holder's shell lines: one socat per endpoint, in the background."""
        return "".join(f"socat UNIX-LISTEN:{SOCKETS_MOUNT}/{name}.sock,fork,unlink-early,mode=600"
                       f" TCP:127.0.0.1:{port} & " for name, port in sorted(self.ports.items()))

    def to_dict(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "sockets": str(self.sockets),
                "endpoints": {name: {"port": port, "url": self.url(name)} for name, port in sorted(self.ports.items())}}


def forwarder_spec(endpoints: Endpoints, run_id: str, network: str, labels: Mapping[str, str], scratch: Path,
                   owner: tuple[int, int]) -> ContainerSpec:
    """The sandbox's forwarder: moat's relay in the run's network, a Unix socket per endpoint."""
    return ContainerSpec(
        role="relay",
        name=f"{CONTAINER_PREFIX}ports-{run_id}",
        image="",
        labels={**labels, LABEL_ROLE: ROLE_RELAY},
        network=network,
        command=tuple(arg for name, port in sorted(endpoints.ports.items())
                      for arg in ("--forward", f"{SOCKETS_MOUNT}/{name}.sock=127.0.0.1:{port}")),
        mounts=(Mount(str(endpoints.sockets), SOCKETS_MOUNT, create=True, owner=owner),),
        scratch=str(scratch / "ports-relay"),
    )
