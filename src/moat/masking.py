"""The one masking sink: every secret a run knows is replaced by ``****`` wherever moat writes text.

A run's ``Masker`` is applied to its record (metadata, logs, saved files), to its status reporter
and to the errors the CLI prints. Secrets are the passwords the catalog generates, every value of a
credential variable (a service's password variables, whatever sets them) and every value given to
a variable whose name says it holds a credential (``MYSQL_PASSWORD``, ``API_TOKEN``, …).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from moat.constants import MASK

# Names of variables that carry credentials, by their words: PASSWORD, PASSWD, PASS, PWD, SECRET,
# TOKEN, KEY (API_KEY, ACCESS_KEY, PRIVATE_KEY), CREDENTIAL(S), AUTH (REDISCLI_AUTH). Matched as a
# whole word of a name split at '_', '-' and '.', so MONKEY and PASSAGE do not count; a name that
# ends in PASSWORD, TOKEN or SECRET counts even unsplit (DBPASSWORD).
_CREDENTIAL_WORDS = frozenset({
    "PASSWORD", "PASSWORDS", "PASSWD", "PASS", "PWD", "SECRET", "SECRETS", "TOKEN", "TOKENS", "KEY", "APIKEY",
    "CREDENTIAL", "CREDENTIALS", "AUTH", "PASSPHRASE",
})
# The shell's working directory, not a password.
_NOT_CREDENTIALS = frozenset({"PWD", "OLDPWD"})


def is_credential_name(name: str) -> bool:
    """Whether a variable of this name holds a credential (its value is masked everywhere)."""
    upper = name.upper()
    if upper in _NOT_CREDENTIALS:
        return False
    words = re.split(r"[_\-.]+", upper)
    return any(word in _CREDENTIAL_WORDS for word in words) or upper.endswith(("PASSWORD", "TOKEN", "SECRET"))


def credential_values(env: Mapping[str, str]) -> set[str]:
    """The values of the credential variables in ``env``."""
    return {value for name, value in env.items() if value and is_credential_name(name)}


class Masker:
    """Replaces every secret with ``****``: raw, percent-encoded (as in URLs) and JSON-escaped.

    A short secret (a user's ``POSTGRES_PASSWORD: pw``) is masked only where it stands as a word
    of its own: masking every "pw" inside "pwd" would garble the text and protect nothing.
    """

    WHOLE_WORD_BELOW = 6

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._forms: list[str] = []
        self._short: re.Pattern[str] | None = None
        self.add(secrets)

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """More secrets (a live service's credentials read back from the engine, say)."""
        with self._lock:
            self._secrets |= {s for s in secrets if s}
            present = self._secrets
            forms = {*present, *(quote(s, safe="") for s in present), *(json.dumps(s)[1:-1] for s in present)}
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(forms, key=len, reverse=True)
            self._forms = [f for f in ordered if len(f) >= self.WHOLE_WORD_BELOW]
            short = [f for f in ordered if len(f) < self.WHOLE_WORD_BELOW]
            self._short = re.compile("|".join(rf"(?<![\w]){re.escape(f)}(?![\w])" for f in short)) if short else None

    def text(self, value: str) -> str:
        forms, short = self._forms, self._short
        for form in forms:
            if form in value:
                value = value.replace(form, MASK)
        if short is not None:
            value = short.sub(MASK, value)
        return value

    def mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        return {k: self.text(v) for k, v in values.items()}

    @property
    def longest(self) -> int:
        """The length of the longest form of any secret (0 without secrets)."""
        forms, short = self._forms, self._short
        return max([len(f) for f in forms] + ([self.WHOLE_WORD_BELOW] if short is not None else []), default=0)

    def spans(self, value: str) -> list[tuple[int, int]]:
        """Where in ``value`` a secret stands (start, end): text that must never be cut in two."""
        found = []
        for form in self._forms:
            start = value.find(form)
            while start != -1:
                found.append((start, start + len(form)))
                start = value.find(form, start + 1)
        if self._short is not None:
            found += [(m.start(), m.end()) for m in self._short.finditer(value)]
        return found


# The maskers of the runs this process executes: the CLI masks every error it prints through them,
# so no code path that builds a message from a service's output can leak a run's secret.
_active: list[Masker] = []
_active_lock = threading.Lock()


def register(masker: Masker) -> None:
    with _active_lock:
        if masker not in _active:
            _active.append(masker)


def scrub(text: str) -> str:
    """``text`` with every secret of every run in this process masked."""
    with _active_lock:
        maskers = list(_active)
    for masker in maskers:
        text = masker.text(text)
    return text
