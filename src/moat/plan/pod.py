"""A Docker run's pod: a small holder container owns the run's network namespace; the services and
the agent join it (``--network container:<holder>``) and talk over 127.0.0.1, by name through the
holder's hosts file. Joined containers start faster than containers on a network of their own
(``benchmarks/pod_start.py``).

Strict: the namespace has nothing but loopback (``--network none``). The only way out is moat's
proxy, reached through the holder's relay from 127.0.0.1:RELAY_PORT to the proxy's Unix socket,
whose directory is the holder's only mount. No route exists, so nothing — raw TCP, UDP, DNS — can go
around the proxy. Permissive: the holder is on the run's own bridge network, with ordinary egress.
Pure: the holder's image and container, as planned.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from moat.constants import CONTAINER_PREFIX, LABEL_ROLE, PROXY_DIR, PROXY_RELAY_DIR, PROXY_SOCKET, ROLE_HOLDER
from moat.plan.containers import ContainerSpec, Mount
from moat.plan.endpoints import SOCKETS_MOUNT, Endpoints
from moat.plan.model import ImageSpec
from moat.plan.proxy import RELAY_PORT

POD_IMAGE_REPO = "moat/pod"
POD_BASE_IMAGE = "debian:bookworm-slim"
RELAY_MOUNT = "/run/moat"  # the proxy socket's directory, inside the holder
# socat: the tool made for relaying; -d -d logs "listening on", which start-up waits for.
RELAY_LISTENING = "listening on"
NO_NETWORK = "none"


def pod_network(holder: str) -> str:
    """The network a container joining the pod names (Docker's ``container:<name>`` mode)."""
    return f"container:{holder}"


def holder_image() -> ImageSpec:
    text = "\n".join((
        f"FROM {POD_BASE_IMAGE}",
        "ENV DEBIAN_FRONTEND=noninteractive",
        "RUN apt-get update && apt-get install -y --no-install-recommends socat && rm -rf /var/lib/apt/lists/*",
        "",
    ))
    tag = f"{POD_IMAGE_REPO}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return ImageSpec(tag, POD_BASE_IMAGE, text, (), 0, 0)


def holder_name(run_id: str) -> str:
    return f"{CONTAINER_PREFIX}pod-{run_id}"


def holder_spec(run_id: str, labels: Mapping[str, str], home: Path, services: tuple[str, ...], user: str,
                scratch: Path, *, strict: bool, network: str, extra_hosts: tuple[tuple[str, str], ...] = (),
                dns: tuple[str, ...] = (), endpoints: Endpoints | None = None) -> ContainerSpec:
    """The holder: the services' names resolve to 127.0.0.1 for every container of the pod, and what
    Docker refuses on a joined container (hosts entries, DNS servers) is set here for them all.

    strict: no network at all, and the relay to the proxy; permissive: on the run's own network
    (``network``; runs stay apart from each other), and nothing to do but hold the namespace."""
    hosts = tuple((name, "127.0.0.1") for name in services)
    relay = ContainerSpec(
        role="holder",
        name=holder_name(run_id),
        image=holder_image().tag,
        labels={**labels, LABEL_ROLE: ROLE_HOLDER},
        network=NO_NETWORK,
        command=("socat", "-d", "-d", f"TCP-LISTEN:{RELAY_PORT},bind=127.0.0.1,reuseaddr,fork",
                 f"UNIX-CONNECT:{RELAY_MOUNT}/{PROXY_SOCKET}"),
        extra_hosts=hosts,
        # No resolver answers in the pod: a lookup fails at once on loopback, no query ever starts
        # toward the host's resolver (the proxy resolves what the agent asks it for).
        dns=("127.0.0.1",),
        mounts=(Mount(str(home / PROXY_DIR / PROXY_RELAY_DIR), RELAY_MOUNT, read_only=True, create=True),),
        user=user,
        cap_drop=("ALL",),
        no_new_privileges=True,
        init=True,  # reaps the relay's per-connection children; ends at once on SIGTERM
        scratch=str(scratch / "holder"),
    )
    if endpoints is not None:  # and the endpoints' forwarders (plan.endpoints), in the socat image
        sockets = Mount(str(endpoints.sockets), SOCKETS_MOUNT, create=True)
        relay = replace(relay, command=("sh", "-c", endpoints.forwarders() + "exec " + shlex.join(relay.command or ())),
                        mounts=(*relay.mounts, sockets))
        if not strict:
            return replace(relay, network=network, command=("sh", "-c", endpoints.forwarders() + "exec sleep infinity"),
                           mounts=(sockets,), extra_hosts=(*hosts, *extra_hosts), dns=dns)
    if strict:
        return relay
    # Nothing to relay: the plain base image holds the namespace (nothing is built for it).
    return replace(relay, image=POD_BASE_IMAGE, network=network, command=("sleep", "infinity"), mounts=(),
                   extra_hosts=(*hosts, *extra_hosts), dns=dns)
