"""Credential providers: the built-ins (the YAML files in this directory) and the user's own
(MOAT_HOME/providers/*.yaml). What a grant of one becomes for a run: ``moat.credentials.injection``."""

from __future__ import annotations

from moat.credentials.providers.model import PROXY_INJECTED, HeaderRule, Provider, TokenCheck
from moat.credentials.providers.registry import GrantSpec, ProviderRegistry, parse_grant

__all__ = ["PROXY_INJECTED", "GrantSpec", "HeaderRule", "Provider", "ProviderRegistry", "TokenCheck", "parse_grant"]
