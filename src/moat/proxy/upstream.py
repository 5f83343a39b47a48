"""The proxy moat itself must go through: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` from the
daemon's own environment, as corporate networks need (standard library only).

curl's conventions: a lower-case variable wins over its upper-case twin; ``NO_PROXY`` lists names
(each also covering its subdomains; a leading dot or ``*.`` is allowed), addresses, CIDR ranges and
``*`` for everything, each optionally with a port. ``ALL_PROXY`` serves as both when set and http(s).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

ServerSpec = tuple[str, tuple[str, int]]  # mitmproxy's form: (scheme, (host, port))


@dataclass(frozen=True)
class UpstreamProxy:
    scheme: str  # http or https (how moat talks to the proxy)
    host: str
    port: int
    auth: str | None = None  # "user:password" for Proxy-Authorization (never logged)

    @property
    def spec(self) -> ServerSpec:
        return (self.scheme, (self.host, self.port))

    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_proxy_url(value: str) -> UpstreamProxy | None:
    """An http(s) proxy URL (``host:port`` alone means http); None for anything else (socks…)."""
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    auth = None
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return UpstreamProxy(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), auth)


@dataclass(frozen=True)
class UpstreamConfig:
    https: UpstreamProxy | None = None  # for TLS (CONNECT) destinations
    http: UpstreamProxy | None = None  # for plain-HTTP requests
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpstreamConfig:
        def pick(name: str) -> str:
            return env.get(name.lower()) or env.get(name.upper()) or ""

        fallback = parse_proxy_url(pick("all_proxy"))
        https = parse_proxy_url(pick("https_proxy")) or fallback
        plain = parse_proxy_url(pick("http_proxy")) or fallback
        no_proxy = tuple(e.strip().lower() for e in pick("no_proxy").split(",") if e.strip())
        return cls(https, plain, no_proxy)

    @property
    def proxies(self) -> tuple[UpstreamProxy, ...]:
        return tuple(p for p in (self.https, self.http) if p is not None)

    def for_destination(self, host: str, port: int, *, tls: bool) -> UpstreamProxy | None:
        """The proxy to reach ``host:port`` through, or None to connect directly."""
        proxy = self.https if tls else self.http
        if proxy is None or bypassed(self.no_proxy, host, port):
            return None
        return proxy


def bypassed(no_proxy: tuple[str, ...], host: str, port: int) -> bool:
    """Whether ``NO_PROXY`` (its entries, lower case) says to connect to ``host:port`` directly."""
    name = host.strip("[]").rstrip(".").lower()
    address = _ip(name)
    for entry in no_proxy:
        if entry == "*":
            return True
        entry_host, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in entry_host:
            try:
                network = ipaddress.ip_network(entry_host, strict=False)
            except ValueError:
                continue
            if address is not None and address.version == network.version and address in network:
                return True
            continue
        domain = entry_host.removeprefix("*").lstrip(".").rstrip(".")
        if domain and (name == domain or name.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
