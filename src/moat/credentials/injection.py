"""A grant, resolved for one run: the proxy's rules (real values inside) and the agent's variables
(placeholders only).

A substitution placeholder (``moat-`` + 16 hex, the Go tool's shape) is drawn at random for each
run and provider and travels in the run's registration: it says nothing about the token (one derived
from it would let the agent, which holds it, test guesses offline). No placeholder ever contains the
token: a fixed placeholder that happens to (a token of a few characters) is replaced by a drawn one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime

from moat.credentials import npm
from moat.credentials.credential import Credential, iso
from moat.credentials.providers.model import SUBSTITUTED, HeaderRule, Provider
from moat.credentials.rules import GrantRules, HeaderInjection, Substitution
from moat.errors import MoatError

PLACEHOLDER_PREFIX = "moat-"
PLACEHOLDER_HEX = 16
_ATTEMPTS = 8


class CredentialExpired(MoatError):
    """The stored credential's expiry has passed."""


def rules_for(provider: Provider, credential: Credential, run_id: str, *, grant: str | None = None,
              now: datetime | None = None) -> tuple[GrantRules, dict[str, str]]:
    """What the proxy does for this grant in run ``run_id``, and what the agent's environment gets.

    ``grant`` is the label the trace records (default: the provider's name)."""
    if credential.provider != provider.name:
        raise ValueError(f"a {credential.provider} credential given for provider {provider.name}")
    if credential.expired(now):
        assert credential.expires_at is not None
        raise CredentialExpired(f"the {provider.name} credential expired at {iso(credential.expires_at)}",
                                hint=f"Store a fresh one: `moat grant {provider.name}`.")
    label = grant or provider.name
    token = credential.token
    if provider.kind == "npm":
        tokens = npm.registries(credential)
        injections = tuple(HeaderInjection((host,), (("Authorization", f"Bearer {value}"),))
                           for host, value in sorted(tokens.items()))
        return GrantRules(label, injections=injections, values=tuple(sorted(set(tokens.values())))), {}
    if provider.substitution:
        placeholder = derived_placeholder(token, run_id, provider.name)
        rules = GrantRules(label, substitutions=(Substitution(provider.hosts, placeholder, token),), values=(token,))
        env = {name: placeholder if value == SUBSTITUTED else value for name, value in provider.container_env.items()}
        return rules, env
    rules = GrantRules(label, injections=_injections(provider.headers, token), values=_forms(provider.headers, token))
    env = {name: _hiding(value, token, run_id, provider.name) for name, value in provider.container_env.items()}
    return rules, env


def _injections(rules: Iterable[HeaderRule], token: str) -> tuple[HeaderInjection, ...]:
    """One injection per header rule: the proxy picks the rules whose headers the agent sent (its
    placeholder says which credential it means), so claude's Authorization and its anthropic-beta
    stay separate — an API-key request that sends anthropic-beta must not get the OAuth token."""
    return tuple(HeaderInjection(rule.hosts, ((rule.header, rule.render(token)),), rule.remove) for rule in rules)


def _forms(rules: Iterable[HeaderRule], token: str) -> tuple[str, ...]:
    """The token, and each encoded form of it a header carries (Basic's base64), for the masks."""
    forms = [token]
    for rule in rules:
        if rule.basic_user is not None and rule.value is None:
            forms.append(rule.render(token).removeprefix(rule.prefix))
    return tuple(dict.fromkeys(forms))


def _hiding(value: str, token: str, run_id: str, provider: str) -> str:
    """A fixed placeholder, unless the token is part of it."""
    return derived_placeholder(token, run_id, provider) if token in value else value


def derived_placeholder(token: str, run_id: str, provider: str) -> str:
    """A random placeholder (``moat-`` + 16 hex), made once per run and carried in its registration.
    Random, not derived from the token: the agent holds the placeholder and its run id, and anything
    computed from the token would let it try weak tokens offline until one gives the placeholder."""
    for _ in range(_ATTEMPTS):
        candidate = PLACEHOLDER_PREFIX + secrets.token_hex(PLACEHOLDER_HEX // 2)
        if token not in candidate:
            return candidate
    raise MoatError(f"the {provider} token is too short to be hidden behind a placeholder",
                    hint=f"Store the real token: `moat grant {provider}`.")
