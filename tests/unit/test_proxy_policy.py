"""Which destinations the proxy refuses (moat.proxy.access) and when it goes through moat's own
upstream proxy (moat.proxy.upstream): pure decisions, no proxy."""

from __future__ import annotations

import ipaddress

import pytest

from moat.proxy import access
from moat.proxy.upstream import UpstreamConfig, UpstreamProxy, bypassed, parse_proxy_url


@pytest.mark.parametrize(("text", "what"), [
    ("127.0.0.1", "a loopback address"),
    ("127.9.9.9", "a loopback address"),
    ("::1", "a loopback address"),
    ("[::1]", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("0.0.0.0", "the unspecified address"),
    ("0.1.2.3", "the unspecified address"),
    ("::", "the unspecified address"),
])
def test_the_hosts_addresses_are_named(text: str, what: str) -> None:
    address = access.parse_ip(text)
    assert address is not None
    assert access.what_address(address) == what


def test_other_addresses_pass_and_names_are_not_addresses() -> None:
    for text in ("203.0.113.9", "8.8.8.8", "2001:db8::1", "10.250.250.250"):
        address = access.parse_ip(text)
        assert address is not None and access.what_address(address) is None, text
    assert access.parse_ip("api.github.com") is None


def test_local_addresses_are_those_a_socket_can_bind() -> None:
    assert access.is_local_address(ipaddress.ip_address("127.0.0.1"))
    assert not access.is_local_address(ipaddress.ip_address("203.0.113.9"))


def test_a_name_is_refused_when_any_of_its_addresses_is_the_hosts() -> None:
    refusal = access.check_addresses("sneaky.example", ["203.0.113.9", "127.0.0.1"])
    assert refusal is not None
    assert refusal.kind == access.KIND_HOST_ADDRESS
    assert refusal.reason == "sneaky.example (127.0.0.1) is a loopback address"
    assert "moat-host:<port>" in refusal.body
    assert access.check_addresses("fine.example", ["203.0.113.9"]) is None
    assert access.check_addresses("nothing.example", []) is None


def test_the_host_service_refusal_says_how_to_allow_the_port() -> None:
    refusal = access.host_service_refusal(5432)
    assert refusal.kind == "host-service"
    assert "network:\n    host:\n      - 5432\n" in refusal.body
    assert access.gateway_port_allowed(5432, (5432, 8080))
    assert not access.gateway_port_allowed(22, (5432,))


def test_loopback_names() -> None:
    assert access.is_loopback_name("localhost")
    assert access.is_loopback_name("LOCALHOST.")
    assert access.is_loopback_name("app.localhost")
    assert not access.is_loopback_name("localhost.example.com")


def test_proxy_urls() -> None:
    assert parse_proxy_url("http://proxy.corp:3128") == UpstreamProxy("http", "proxy.corp", 3128)
    assert parse_proxy_url("proxy.corp:8080") == UpstreamProxy("http", "proxy.corp", 8080)
    assert parse_proxy_url("https://u%40corp:p%3Aw@proxy.corp") == UpstreamProxy("https", "proxy.corp", 443,
                                                                                 "u@corp:p:w")
    assert parse_proxy_url("socks5://proxy.corp:1080") is None
    assert parse_proxy_url("http://proxy.corp:notaport") is None
    assert parse_proxy_url("") is None


def test_the_environment_lower_case_first_all_proxy_last() -> None:
    config = UpstreamConfig.from_env({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2",
                                      "ALL_PROXY": "http://all:3", "NO_PROXY": " .corp , 10.0.0.0/8 "})
    assert config.https == UpstreamProxy("http", "lower", 2)
    assert config.http == UpstreamProxy("http", "all", 3)
    assert config.no_proxy == (".corp", "10.0.0.0/8")
    assert config.for_destination("api.github.com", 443, tls=True) == config.https
    assert config.for_destination("git.corp", 443, tls=True) is None
    assert config.for_destination("10.1.2.3", 80, tls=False) is None
    assert UpstreamConfig.from_env({}).for_destination("api.github.com", 443, tls=True) is None
    assert UpstreamConfig.from_env({}).proxies == ()


@pytest.mark.parametrize(("entries", "host", "port", "expected"), [
    (("*",), "anything.example", 443, True),
    (("example.com",), "example.com", 443, True),
    (("example.com",), "api.example.com", 443, True),
    (("example.com",), "badexample.com", 443, False),
    ((".example.com",), "api.example.com", 443, True),
    (("*.example.com",), "api.example.com", 443, True),
    (("example.com:8443",), "example.com", 443, False),
    (("example.com:8443",), "example.com", 8443, True),
    (("192.168.0.0/16",), "192.168.4.5", 80, True),
    (("192.168.0.0/16",), "192.169.0.1", 80, False),
    (("::1",), "::1", 80, True),
    (("[::1]:80",), "::1", 80, True),
    (("10.0.0.0/8",), "ten.example", 80, False),
])
def test_no_proxy_entries(entries: tuple[str, ...], host: str, port: int, expected: bool) -> None:
    assert bypassed(entries, host, port) is expected


def test_other_container_networks_and_metadata_addresses_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from moat.proxy import access

    monkeypatch.setattr(access, "container_networks", lambda: (ipaddress.IPv4Network("172.19.0.0/16"),))
    assert access.what_address(ipaddress.ip_address("172.19.0.2")) == "on a container network of this host"
    assert access.what_address(ipaddress.ip_address("100.100.100.200")) == "a cloud metadata address"
    assert access.what_address(ipaddress.ip_address("fd00:ec2::254")) == "a cloud metadata address"
    assert access.what_address(ipaddress.ip_address("93.184.216.34")) is None  # the internet is the internet

