"""Which destinations the proxy refuses: the host moat runs on, in any of its names.

An agent must not reach the host's own services through the proxy — loopback, link-local
(169.254/16, where clouds answer metadata requests; fe80::/10), the unspecified address and every
address of the host's interfaces (a Docker bridge gateway, its LAN address) — except the ports the
run lists under ``network.host``, which it reaches as ``moat-host:<port>``. The decision is made
on *addresses*: a name is refused when what it resolves to is one of these (standard library only).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

HOST_GATEWAY = "moat-host"  # the name the agent uses for the host's allowed ports
HOST_GATEWAY_ADDRESS = "127.0.0.1"  # where those ports are reached

KIND_HOST_SERVICE = "host-service"  # moat-host:<port> for a port the run does not list
KIND_HOST_ADDRESS = "host-address"  # any other way to the host
KIND_REQUEST_RULE = "request-rule"  # the run's network policy (network.rules, strict)
KIND_LLM_POLICY = "llm-policy"  # claude.llm-gateway: a model answer its Keep rules deny

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Refusal:
    kind: str
    reason: str  # short, for the trace
    body: str  # what the client reads


def host_service_refusal(port: int) -> Refusal:
    # The Go tool's words, so its users recognise them.
    body = (f"Moat: request blocked — host service access to {HOST_GATEWAY}:{port} is not allowed by default.\n"
            f"To allow port {port} on the host, add to moat.yaml:\n\n  network:\n    host:\n      - {port}\n")
    return Refusal(KIND_HOST_SERVICE, f"port {port} on the host is not listed in network.host", body)


def host_address_refusal(host: str, address: str, what: str) -> Refusal:
    shown = host if host == address else f"{host} ({address})"
    body = (f"Moat: request blocked — {shown} is {what}: the agent may not reach the host moat runs on.\n"
            f"Ports listed under network.host in moat.yaml are reached as {HOST_GATEWAY}:<port>.\n")
    return Refusal(KIND_HOST_ADDRESS, f"{shown} is {what}", body)


def parse_ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def is_loopback_name(host: str) -> bool:
    """Names that mean this machine without asking DNS (RFC 6761): checked by name where the proxy
    does not resolve names itself (an upstream proxy does)."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def what_address(address: IPAddress) -> str | None:
    """What makes ``address`` one of the host's (a phrase for the message), or None if it is not."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
        return "the unspecified address"
    if is_local_address(address):
        return "an address of this host"
    if address in _METADATA:
        return "a cloud metadata address"
    if any(address in network for network in container_networks()):
        return "on a container network of this host"
    return None


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host on this network": reaches the host
# Metadata services outside 169.254/16 (link-local is refused already): Alibaba's, AWS's over IPv6.
_METADATA = frozenset({ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")})
# Bridges of container engines on this host: other runs' sidecars (an ollama without a password) and
# any container live there. The proxy sits in the host's network namespace, so it could reach them
# where the engine's own isolation drops an agent's packets: refused.
CONTAINER_BRIDGES = ("docker", "br-", "cni", "podman", "virbr")
_SIOCGIFADDR, _SIOCGIFNETMASK = 0x8915, 0x891B
_BRIDGES_TTL = 1.0  # seconds: engines add and remove bridges while the proxy runs
_bridges: tuple[float, tuple[ipaddress.IPv4Network, ...]] = (0.0, ())


def container_networks() -> tuple[ipaddress.IPv4Network, ...]:
    """The IPv4 networks of the host's container bridges (read from the kernel, briefly cached)."""
    global _bridges  # noqa: PLW0603 — a cache of one value
    now = time.monotonic()
    if now - _bridges[0] < _BRIDGES_TTL:
        return _bridges[1]
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            if not name.startswith(CONTAINER_BRIDGES):
                continue
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)[20:24])
                netmask = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), _SIOCGIFNETMASK, request)[20:24])
            except OSError:
                continue  # no IPv4 address (yet)
            found.append(ipaddress.IPv4Network(f"{address}/{netmask}", strict=False))
    _bridges = (now, tuple(found))
    return _bridges[1]


def is_local_address(address: IPAddress) -> bool:
    """Whether ``address`` belongs to one of this machine's interfaces: the kernel lets a socket bind
    to exactly those (asked afresh each time: Docker adds and removes bridges while moat runs)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError as exc:
            # Any other refusal than "not an address of mine": when unsure, it is the host's.
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def check_addresses(host: str, addresses: Iterable[str]) -> Refusal | None:
    """A refusal when any address ``host`` resolves to is the host's own: the client could be sent
    to any of them."""
    for text in addresses:
        address = parse_ip(text)
        if address is None:
            continue
        what = what_address(address)
        if what is not None:
            return host_address_refusal(host, str(address), what)
    return None


def gateway_port_allowed(port: int, host_ports: Iterable[int]) -> bool:
    return port in set(host_ports)
