"""Asking a provider whether a token works before it is stored (the provider's ``validate``).

Any 2xx is a yes (the Go tool's rule). Errors never quote the URL or a header: either may hold the
token (Telegram's is in the path).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import httpx

from moat.credentials.providers.model import TOKEN, TokenCheck
from moat.errors import MoatError

TIMEOUT = 10.0
USER_AGENT = "moat"
_SKIP = "Check the token, or store it without this check: add --no-validate."


class TokenRejected(MoatError):
    """The provider refused the token, or could not be asked."""


def check_token(provider: str, check: TokenCheck, token: str, *, timeout: float = TIMEOUT) -> None:
    url = check.url.replace(TOKEN, quote(token, safe=""))  # a token is never a path of its own making
    host = urlsplit(check.url).hostname or "the provider"
    headers = {"User-Agent": USER_AGENT}
    headers.update({name: value.replace(TOKEN, token) for name, value in check.headers})
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            status = client.request(check.method, url, headers=headers).status_code
    except httpx.HTTPError as exc:
        raise TokenRejected(f"could not validate the {provider} token: {host} did not answer"
                            f" ({type(exc).__name__})", hint=_SKIP) from None
    if 200 <= status < 300:
        return
    if status == 401:
        why = "invalid token (401 Unauthorized)"
    elif status == 403:
        why = "token rejected (403 Forbidden): it may lack permissions, or the account is rate limited"
    elif status == 429:
        why = "rate limited (429): the token may be valid, but cannot be checked now"
    else:
        why = f"unexpected status {status} from {host}"
    raise TokenRejected(f"{provider}: {why}", hint=_SKIP)
