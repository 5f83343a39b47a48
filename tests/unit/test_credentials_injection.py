"""``rules_for``: a grant becomes the proxy's rules (real values) and the agent's variables
(placeholders that never hold the token)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from moat.credentials import npm
from moat.credentials.credential import Credential
from moat.credentials.injection import CredentialExpired, derived_placeholder, rules_for
from moat.credentials.providers import ProviderRegistry
from moat.credentials.providers.schema import parse_provider
from moat.credentials.rules import GrantRules, HeaderInjection, Registration, Substitution
from moat.errors import MoatError

REGISTRY = ProviderRegistry.load(None)
TOKEN = "tok_REAL_SECRET_0123456789"

# The GitHub token goes to its API as Bearer, and to Copilot's API hosts (one per plan).
GITHUB_API_HOSTS = ("api.github.com", "api.githubcopilot.com", "api.individual.githubcopilot.com",
                    "api.business.githubcopilot.com", "api.enterprise.githubcopilot.com")


def grant(name: str, token: str = TOKEN, run_id: str = "run_abc",
          **kwargs: object) -> tuple[GrantRules, dict[str, str]]:
    provider = REGISTRY.get(name)
    return rules_for(provider, Credential(provider.name, token), run_id, **kwargs)  # type: ignore[arg-type]


def no_token_in(env: dict[str, str], token: str = TOKEN) -> None:
    for name, value in env.items():
        assert token not in value, name
        assert token not in name


def test_github_rules_and_env() -> None:
    rules, env = grant("github")
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert rules == GrantRules("github", injections=(
        HeaderInjection(GITHUB_API_HOSTS, (("Authorization", f"Bearer {TOKEN}"),)),
        HeaderInjection(("github.com",), (("Authorization", f"Basic {basic}"),)),
    ), values=(TOKEN, basic))
    assert env == {"GH_TOKEN": "ghp_moatProxyInjectedPlaceholder000000000000", "GIT_TERMINAL_PROMPT": "0"}
    assert {TOKEN, basic, f"Bearer {TOKEN}", f"Basic {basic}"} <= rules.secret_values()
    assert [i.applies_to("API.github.com") for i in rules.injections] == [True, False]


def test_claude_rules_remove_the_api_key_and_add_the_beta() -> None:
    rules, env = grant("claude")
    assert rules.injections == (
        HeaderInjection(("api.anthropic.com",), (("Authorization", f"Bearer {TOKEN}"),), ("x-api-key",)),
        HeaderInjection(("api.anthropic.com",), (("anthropic-beta", "oauth-2025-04-20"),)),
    )
    assert env == {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-moat-proxy-injected-placeholder-not-a-real-token"}


def test_the_grant_label_is_what_the_run_calls_it() -> None:
    rules, _ = grant("codex", grant="codex")
    assert rules.grant == "codex"
    assert grant("codex")[0].grant == "openai"


def test_wildcard_hosts_reach_the_proxy_rules() -> None:
    rules, env = grant("gitlab")
    assert rules.injections[0].hosts == ("gitlab.com", "*.gitlab.com")
    assert rules.injections[0].applies_to("registry.gitlab.com")
    assert env == {"GITLAB_TOKEN": "moat-proxy-injected"}


def test_substitution_placeholder_is_random_per_run_and_hides_the_token() -> None:
    rules, env = grant("telegram", run_id="run_1")
    placeholder = env["TELEGRAM_BOT_TOKEN"]
    assert placeholder.startswith("moat-") and len(placeholder) == len("moat-") + 16
    assert rules == GrantRules("telegram", substitutions=(Substitution(("api.telegram.org",), placeholder, TOKEN),),
                               values=(TOKEN,))
    # Nothing about the token is in it (review: an HMAC of the run id let an agent test weak tokens
    # offline): each resolution draws a new one.
    assert grant("telegram", run_id="run_1")[1]["TELEGRAM_BOT_TOKEN"] != placeholder
    assert grant("telegram", run_id="run_2")[1]["TELEGRAM_BOT_TOKEN"] != placeholder
    no_token_in(env)


def test_a_user_substitution_provider() -> None:
    provider = parse_provider("name: bot\ndescription: b\nhosts: [a.example, '*.b.example']\ncontainer_env: BOT\n",
                              file=None, origin="custom")
    rules, env = rules_for(provider, Credential("bot", TOKEN), "run_x")
    assert rules.substitutions[0].hosts == ("a.example", "*.b.example")
    assert rules.substitutions[0].placeholder == env["BOT"]
    assert rules.hosts == ("a.example", "*.b.example")


@pytest.mark.parametrize("name", [p.name for p in REGISTRY.providers() if p.kind == "token"])
def test_no_placeholder_of_any_provider_holds_the_token(name: str) -> None:
    rules, env = grant(name)
    no_token_in(env)
    assert TOKEN in rules.secret_values()  # the bare token is masked wherever it could show
    # What the run registers survives the trip to the proxy daemon.
    registration = Registration("run_abc", "proxy-token", grants=(rules,))
    assert Registration.from_json(registration.to_json()) == registration


def test_a_fixed_placeholder_that_would_contain_the_token_is_replaced() -> None:
    rules, env = grant("anthropic", token="proxy-inj")  # part of "moat-proxy-injected"
    assert env["ANTHROPIC_API_KEY"].startswith("moat-") and "proxy-inj" not in env["ANTHROPIC_API_KEY"]
    assert rules.injections[0].set == (("x-api-key", "proxy-inj"),)


def test_a_token_no_placeholder_can_hide_is_refused() -> None:
    with pytest.raises(MoatError, match="too short"):
        derived_placeholder("moat", "run", "telegram")
    with pytest.raises(MoatError, match="too short"):
        derived_placeholder("a", "run", "telegram")  # every placeholder starts with "moat-"
    placeholder = derived_placeholder("ab", "run", "telegram")  # one without "ab" is drawn
    assert "ab" not in placeholder


def test_npm_gets_one_rule_per_registry_and_no_env() -> None:
    token = npm.credential_token({"registry.npmjs.org": "npm_public_0000000000", "npm.example.com": "npm_private_1"})
    rules, env = rules_for(REGISTRY.get("npm"), Credential("npm", token), "run_1")
    assert env == {}
    assert rules.injections == (
        HeaderInjection(("npm.example.com",), (("Authorization", "Bearer npm_private_1"),)),
        HeaderInjection(("registry.npmjs.org",), (("Authorization", "Bearer npm_public_0000000000"),)),
    )
    assert {"npm_private_1", "npm_public_0000000000"} <= rules.secret_values()


def test_an_expired_credential_stops_the_run_with_what_to_do() -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    provider = REGISTRY.get("github")
    with pytest.raises(CredentialExpired) as caught:
        rules_for(provider, Credential("github", TOKEN, expires_at=past), "run_1")
    assert "moat grant github" in (caught.value.hint or "")
    future = datetime.now(UTC) + timedelta(hours=1)
    rules_for(provider, Credential("github", TOKEN, expires_at=future), "run_1")


def test_a_credential_of_another_provider_is_a_bug() -> None:
    with pytest.raises(ValueError, match="openai credential given for provider github"):
        rules_for(REGISTRY.get("github"), Credential("openai", TOKEN), "run_1")
