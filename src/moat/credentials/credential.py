"""A stored credential: one provider's token and what moat knows about where it came from.

The token is the only secret; everything else (source, scopes, dates, extra) may be shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moat.errors import UsageError

# Provider names become file names (``github.enc``) and are written ``name:scopes`` in grants, so
# they are kept to what every file system and the grant syntax can hold.
PROVIDER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
PROVIDER_NAME_RULE = "a provider name of lowercase letters, digits, '-' and '_'"
# The Go tool's rule for profile names (credentials/profiles/<NAME>/).
PROFILE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$")
MAX_NAME = 64

# Shorter tokens are shown as a mask only: their last four characters would be most of them.
_HINT_MIN_LENGTH = 12


def check_provider_name(name: str) -> str:
    if len(name) > MAX_NAME or not PROVIDER_NAME_RE.match(name):
        raise UsageError(f"invalid provider name {name[:MAX_NAME]!r}: expected {PROVIDER_NAME_RULE}")
    return name


def check_profile_name(name: str) -> str:
    if len(name) > MAX_NAME or not PROFILE_NAME_RE.match(name):
        raise UsageError(f"invalid profile name {name[:MAX_NAME]!r}: it must start with a letter or digit and"
                         " contain only letters, digits, '-' and '_'")
    return name


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a token, or None. The message never quotes it."""
    if not token:
        return "the token is empty"
    for char in token:
        # A token ends up in an HTTP header: a line break there would be a header of the agent's making;
        # anything but printable ASCII cannot be a header's value at all.
        if char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F:
            return "the token contains a space or a control character; a token is one word"
        if not 0x21 <= ord(char) <= 0x7E:
            return "the token contains a character that is not printable ASCII; tokens are ASCII"
    return None


def mask_token(token: str) -> str:
    """``****abcd``: the last four characters, and only of a token long enough to spare them."""
    if not token:
        return "(empty)"
    if len(token) < _HINT_MIN_LENGTH:
        return "****"
    return "****" + token[-4:]


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, repr=False)
class Credential:
    """One provider's credential. ``repr`` never shows the token (it ends up in tracebacks)."""

    provider: str
    token: str
    scopes: tuple[str, ...] = ()
    # Where the token came from: "env:VAR", "cli:gh", "prompt", "token-env:VAR", "npmrc".
    source: str = ""
    created_at: datetime = field(default_factory=now_utc)
    expires_at: datetime | None = None
    # Provider-specific facts that are not secret (the npm registries' hosts, say).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Credential(provider={self.provider!r}, token={mask_token(self.token)!r}, scopes={self.scopes!r},"
                f" source={self.source!r}, created_at={iso(self.created_at)!r})")

    __str__ = __repr__

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "token": self.token,
            "scopes": list(self.scopes),
            "source": self.source,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at) if self.expires_at else None,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Credential:
        """Raises KeyError, TypeError or ValueError on a record that is not one (the store says so)."""
        provider, token = data["provider"], data["token"]
        if not isinstance(provider, str) or not isinstance(token, str):
            raise TypeError("provider and token must be strings")
        scopes = data.get("scopes") or []
        extra = data.get("extra") or {}
        if not isinstance(scopes, list) or not isinstance(extra, dict):
            raise TypeError("scopes must be a list and extra a mapping")
        return cls(
            provider=provider,
            token=token,
            scopes=tuple(str(s) for s in scopes),
            source=str(data.get("source") or ""),
            created_at=_parse_time(data.get("created_at")) or now_utc(),
            expires_at=_parse_time(data.get("expires_at")),
            extra=extra,
        )

    def public_json(self) -> dict[str, Any]:
        """What may be printed: everything but the token, which appears as its hint."""
        data = self.to_json()
        data["token"] = mask_token(self.token)
        return data

