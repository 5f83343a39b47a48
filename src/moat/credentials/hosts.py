"""Host patterns, as providers and network rules write them: ``api.github.com`` or ``*.gitlab.com``.

Standard library only (the proxy daemon imports it).
"""

from __future__ import annotations

import contextlib
import ipaddress


def normalize_host(host: str) -> str:
    """Lower case, without a trailing dot or IPv6 brackets: how names are compared."""
    return host.strip().rstrip(".").lower().removeprefix("[").removesuffix("]")


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` (a name or an address, without port) is one ``pattern`` names.

    ``*.example.com`` matches any name below example.com (``a.example.com``, ``a.b.example.com``)
    but not ``example.com`` itself: a provider lists both when it means both, as the Go tool's do.
    """
    pattern, host = normalize_host(pattern), normalize_host(host)
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def any_host_matches(patterns: tuple[str, ...] | list[str], host: str) -> bool:
    """``host`` may carry a port (``moat-host:8787``, one of the host's own services): a pattern
    with that port names it, and so does one without a port (every port of the name)."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not name.endswith("]") and ":" not in name:
        return any(host_matches(p, name) if ":" not in p else p.strip().lower() == host.strip().lower()
                   for p in patterns)
    return any(host_matches(p, host) for p in patterns)


def valid_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not a host pattern, or None when it is one."""
    text = pattern.strip()
    if not text:
        return "a host pattern cannot be empty"
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(normalize_host(text))
        return None  # an address, as a refusal names one (IPv6 with or without brackets)
    if not text.isascii():
        return (f"'{pattern}' is not ASCII: give the name as DNS carries it"
                f" ({_punycode(text) or 'its xn-- form'}), which is what the proxy sees")
    if "://" in text or "/" in text:
        return f"'{pattern}' is a URL or path; give the host name only (e.g. api.example.com)"
    body = text[2:] if text.startswith("*.") else text
    if "*" in body:
        return f"'{pattern}': a wildcard may only start a pattern, as in *.example.com"
    if ":" in body and not body.startswith("["):
        return f"'{pattern}': give the host without a port"
    labels = body.rstrip(".").split(".")
    for label in labels:
        if not label or len(label) > 63 or not all(c.isalnum() or c in "-_" for c in label):
            return f"'{pattern}' is not a host name"
    return None


def _punycode(text: str) -> str | None:
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return None
