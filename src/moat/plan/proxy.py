"""The run's way out through moat's credential proxy, as planned: which grants it carries, what the
agent is told (placeholders, the proxy's address, moat's CA), and how the agent reaches the proxy.

The agent never holds a credential: its environment names placeholders, the proxy puts the real
values into requests for the hosts each grant names. Pure: the values arrive resolved in the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from moat.credentials.rules import GrantRules, Registration

PROXY_USER = "moat"  # the proxy URL's user name (the Go tool's); the password is the run's token
PROXY_HOST = "moat-proxy"  # the proxy's name inside a container (an /etc/hosts entry)
HOST_GATEWAY = "moat-host"  # the host's own ports listed in network.host, reached through the proxy
RELAY_PORT = 19080  # where the sandbox's relay listens inside the run's network (the Go tool's default port)
CA_DIR = "/etc/ssl/certs/moat-ca"  # where moat's public CA is mounted in a container
CA_FILE_NAME = "ca.crt"
# Variables that tell TLS clients which CA to trust: moat's, since every TLS connection through the
# proxy is signed by it (curl's own, CURL_CA_BUNDLE, too: Debian's curl ignores SSL_CERT_FILE).
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CURL_CA_BUNDLE")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
# Git sends proxy credentials only when asked unless told to use basic: GIT_CONFIG_* set it for every
# git in the container without touching a config file.
GIT_VARIABLES = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.proxyAuthMethod", "GIT_CONFIG_VALUE_0": "basic"}
HOST_GATEWAY_VARIABLE = "MOAT_HOST_GATEWAY"

Route = Literal["gateway", "relay"]


@dataclass(frozen=True)
class ResolvedGrant:
    """One grant of the run, resolved from the credential store by the caller."""

    name: str  # as the run asked for it (``github``, ``github:repo``)
    rules: GrantRules  # what the proxy does for it (real values inside)
    env: Mapping[str, str]  # what the agent sees instead (placeholders)
    # Files the agent gets, by the variable that names where (npm's NPM_CONFIG_USERCONFIG → its .npmrc,
    # with placeholders): mounted read-only, the variable set to the path.
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxySpec:
    """How this run uses the proxy."""

    registration: Registration  # token, rules and host ports: what the run registers with the proxy
    ca_file: str  # moat's public CA certificate on the host (mounted read-only; its key never is)
    ca_path: str  # where the agent finds it
    # gateway: the proxy listens on the engine's host gateway, which the agent reaches as moat-proxy
    # (Docker); relay: a relay inside the run's network namespace forwards 127.0.0.1:RELAY_PORT to the
    # proxy's Unix socket (the sandbox, whose namespace has only loopback).
    route: Route
    grants: tuple[str, ...]  # names, for messages and the record

    @property
    def token(self) -> str:
        return self.registration.token

    def address(self, port: int | None) -> tuple[str, int]:
        """Where the agent connects: the relay's fixed port, or the gateway listener's ``port``."""
        if self.route == "relay":
            return "127.0.0.1", RELAY_PORT
        if port is None:
            raise ValueError("a gateway route needs the proxy's port")
        return PROXY_HOST, port

    def proxy_env(self, port: int | None) -> dict[str, str]:
        """The variables that send the agent's HTTP(S) through the proxy (known once it listens)."""
        host, number = self.address(port)
        url = f"http://{PROXY_USER}:{self.token}@{host}:{number}"
        return dict.fromkeys(PROXY_VARIABLES, url)


def static_env(spec: ProxySpec, services: tuple[str, ...], grant_env: Mapping[str, str]) -> dict[str, str]:
    """What the agent is told at plan time: everything but the proxy's address."""
    no_proxy = ",".join(dict.fromkeys(("localhost", "127.0.0.1", "::1", *services)))
    env = dict.fromkeys(NO_PROXY_VARIABLES, no_proxy)
    env.update(dict.fromkeys(CA_VARIABLES, spec.ca_path))
    env.update(GIT_VARIABLES)
    env[HOST_GATEWAY_VARIABLE] = HOST_GATEWAY
    env.update(grant_env)
    return env


# Clients read these in any case (Python's urllib takes NO_proxy): compared without case.
_AROUND = {n.upper() for n in (*PROXY_VARIABLES, *NO_PROXY_VARIABLES, *CA_VARIABLES, *GIT_VARIABLES,
                               HOST_GATEWAY_VARIABLE, "ALL_PROXY", "CURL_ALL_PROXY", "SSL_CERT_DIR",
                               "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
                               "GIT_SSL_NO_VERIFY", "NODE_TLS_REJECT_UNAUTHORIZED")}
_AROUND_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")


def routes_around(name: str, spec: ProxySpec | None) -> bool:
    """Whether a variable the user sets would send the agent around moat's proxy (or past its CA)."""
    if spec is None:
        return False
    upper = name.upper()
    return upper in _AROUND or upper.startswith(_AROUND_PREFIXES)
