"""The proxy's one error type (standard library only: the daemon shares it)."""

from __future__ import annotations

from moat.errors import MoatError


class ProxyError(MoatError):
    """moat's credential proxy could not be started, reached or asked something."""
