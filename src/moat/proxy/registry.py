"""The runs the daemon serves, found by the proxy token each request carries (standard library only).

A token is looked up by its SHA-256 digest and confirmed with a constant-time comparison: how long
an answer takes says nothing about how close a guessed token came to a registered one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moat.constants import NETWORK_TRACE, RUNS_DIR
from moat.credentials.rules import Registration
from moat.masking import Masker
from moat.policy.rules import NetworkPolicy

MIN_TOKEN_LENGTH = 16  # a run's token is random (the run makes 32 bytes); a short one is a mistake


@dataclass
class Run:
    registration: Registration
    masker: Masker  # every secret of the run: the trace passes through it
    injected_names: frozenset[str] = field(default_factory=frozenset)  # headers its grants put secrets in
    policy: NetworkPolicy | None = None  # network.rules and strict mode, when the run has them
    llm_policy: Any = None  # claude.llm-gateway's compiled Keep rules (a moat.policy.keep.Evaluator)

    @property
    def run_id(self) -> str:
        return self.registration.run_id


def secret_forms(values: Iterable[str]) -> set[str]:
    """The values and the forms they take on the wire: ``Basic <base64>`` also as the decoded
    ``user:password`` and the password alone."""
    forms = set()
    for value in values:
        forms.add(value)
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "basic" and credential:
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
            forms.add(decoded)
            forms.add(decoded.partition(":")[2])
    return {f for f in forms if f}


def policy_of(registration: Registration) -> NetworkPolicy | None:
    """The run's network policy, as the plan wrote it into the registration (ValueError if malformed)."""
    data = registration.extra.get("policy")
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("a network policy is an object")
    return NetworkPolicy.from_json(data)


def llm_policy_of(registration: Registration) -> Any:
    """The run's claude.llm-gateway rules, compiled (ValueError if they cannot be)."""
    data = registration.extra.get("llm_policy")
    if data is None:
        return None
    from moat.policy.keep import Evaluator, RuleSet  # noqa: PLC0415 — CEL is imported by runs that use it

    if not isinstance(data, dict):
        raise ValueError("an LLM policy is an object")
    try:
        return Evaluator(RuleSet.from_json(data))
    except ImportError:
        raise ValueError("claude.llm-gateway needs cel-python in the proxy's Python environment"
                         " (pip install cel-python there)") from None


def validate(registration: Registration, home: Path | None = None) -> str | None:
    """Why the daemon refuses ``registration``, or None. The trace goes to the run's own record and
    nowhere else: whoever can reach the control socket must not make the daemon append to any file."""
    if not registration.run_id or len(registration.run_id) > 200:
        return "a registration needs a run id"
    if len(registration.token) < MIN_TOKEN_LENGTH:
        return f"a run's proxy token must be at least {MIN_TOKEN_LENGTH} characters"
    if registration.trace_file is not None and not os.path.isabs(registration.trace_file):
        return "the trace file must be an absolute path"
    if registration.trace_file is not None and home is not None:
        expected = home / RUNS_DIR / registration.run_id / NETWORK_TRACE
        if "/" in registration.run_id or registration.run_id in (".", "..") or \
                Path(registration.trace_file) != expected:
            return f"a run's trace is {home / RUNS_DIR}/<run id>/{NETWORK_TRACE}"
    try:
        policy_of(registration)
    except ValueError as exc:
        return f"its network policy: {exc}"
    bad_ports = [p for p in registration.host_ports if not 1 <= p <= 65535]
    if bad_ports:
        return f"host port {bad_ports[0]} is out of range (1-65535)"
    return None


class RunRegistry:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home  # MOAT_HOME: where runs' traces must be
        self._by_digest: dict[bytes, Run] = {}
        self._digest_of: dict[str, bytes] = {}  # run id → its token's digest
        self._empty_since: float | None = time.monotonic()

    def register(self, registration: Registration) -> None:
        """Add a run, or replace what a run registered before (same id). ValueError when refused."""
        problem = validate(registration, self.home)
        if problem:
            raise ValueError(problem)
        digest = _digest(registration.token)
        holder = self._by_digest.get(digest)
        if holder is not None and holder.run_id != registration.run_id:
            raise ValueError("another run holds this proxy token")
        self.unregister(registration.run_id)
        injected = frozenset(name.lower() for g in registration.grants for i in g.injections for name, value in i.set
                             if value in g.secret_values())  # a fixed header (anthropic-beta) is no secret
        masker = Masker(secret_forms(registration.secret_values()))
        llm = llm_policy_of(registration)
        self._by_digest[digest] = Run(registration, masker, injected, policy_of(registration), llm)
        self._digest_of[registration.run_id] = digest
        self._empty_since = None

    def unregister(self, run_id: str) -> bool:
        digest = self._digest_of.pop(run_id, None)
        if digest is None:
            return False
        del self._by_digest[digest]
        if not self._digest_of:
            self._empty_since = time.monotonic()
        return True

    def authenticate(self, token: str) -> Run | None:
        run = self._by_digest.get(_digest(token))
        if run is None or not hmac.compare_digest(run.registration.token.encode(), token.encode()):
            return None
        return run

    def get(self, run_id: str) -> Run | None:
        digest = self._digest_of.get(run_id)
        return self._by_digest.get(digest) if digest is not None else None

    def run_ids(self) -> list[str]:
        return sorted(self._digest_of)

    def idle_for(self) -> float:
        """Seconds since the last run left (0 while any is registered)."""
        return 0.0 if self._empty_since is None else time.monotonic() - self._empty_since

    def touch(self) -> None:
        """A client asked something: the idle time starts again (it is about to register, most likely)."""
        if self._empty_since is not None:
            self._empty_since = time.monotonic()

    def __len__(self) -> int:
        return len(self._digest_of)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_from_header(value: str) -> str | None:
    """The run token in a ``Proxy-Authorization`` value: ``Basic base64(moat:<token>)`` (the
    password; any user name) or ``Bearer <token>``."""
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if not credential.isascii():  # a header of any bytes: never a token, never an error
        return None
    if scheme.lower() == "bearer":
        token = credential
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential, validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            return None
        _user, colon, token = decoded.partition(":")
        if not colon:
            return None
    else:
        return None
    return token if token and token.isascii() and token.isprintable() else None
