"""What a run's grants do to a request (moat.proxy.inject) and how runs are found by token
(moat.proxy.registry): pure, no proxy."""

from __future__ import annotations

import base64

import pytest

from moat.credentials.rules import GrantRules, HeaderInjection, Registration, Substitution
from moat.proxy.inject import inject_headers, substitute, substitute_bytes, substitutions_for
from moat.proxy.registry import MIN_TOKEN_LENGTH, RunRegistry, secret_forms, token_from_header, validate

TOKEN = "t" * 32

GITHUB = GrantRules("github", injections=(
    HeaderInjection(("api.github.com",), (("Authorization", "Bearer ghp_real"),)),
    HeaderInjection(("github.com",), (("Authorization", "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX3JlYWw="),)),
))
ANTHROPIC = GrantRules("anthropic", injections=(
    HeaderInjection(("api.anthropic.com",), (("x-api-key", "sk-ant-real"),)),))
CLAUDE = GrantRules("claude", injections=(HeaderInjection(
    ("api.anthropic.com",), (("Authorization", "Bearer oat-real"), ("anthropic-beta", "oauth-2025-04-20")),
    remove=("x-api-key",)),))
WILD = GrantRules("gitlab", injections=(HeaderInjection(("*.gitlab.com",), (("PRIVATE-TOKEN", "gl-real"),)),))


def names(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers}


def test_a_grant_sets_its_header_for_its_hosts_only() -> None:
    sent = [("Host", "api.github.com"), ("Authorization", "Bearer ghp_placeholder"), ("Accept", "*/*")]
    injected = inject_headers(sent, [GITHUB], "api.github.com")
    assert injected is not None
    assert names(injected.headers) == {"host": "api.github.com", "authorization": "Bearer ghp_real", "accept": "*/*"}
    assert injected.grants == ("github",)
    assert injected.names == frozenset({"authorization"})
    git = inject_headers([("Host", "github.com")], [GITHUB], "github.com")
    assert git is not None and names(git.headers)["authorization"].startswith("Basic ")
    assert inject_headers(sent, [GITHUB], "evil.example") is None
    assert inject_headers(sent, [GITHUB], "sub.api.github.com") is None  # exact names are exact


def test_wildcard_hosts_match_subdomains_not_the_apex() -> None:
    assert inject_headers([], [WILD], "api.gitlab.com") is not None
    assert inject_headers([], [WILD], "a.b.gitlab.com") is not None
    assert inject_headers([], [WILD], "gitlab.com") is None
    assert inject_headers([], [WILD], "evilgitlab.com") is None


def test_the_header_the_client_sent_picks_the_grant() -> None:
    # Both serve api.anthropic.com: an agent sending x-api-key means the API key...
    api_key = inject_headers([("x-api-key", "placeholder")], [CLAUDE, ANTHROPIC], "api.anthropic.com")
    assert api_key is not None
    assert names(api_key.headers) == {"x-api-key": "sk-ant-real"}
    assert api_key.grants == ("anthropic",)
    # ...one sending Authorization means OAuth, whose rule drops any x-api-key.
    oauth = inject_headers([("Authorization", "Bearer p")], [ANTHROPIC, CLAUDE], "api.anthropic.com")
    assert oauth is not None
    assert names(oauth.headers) == {"authorization": "Bearer oat-real", "anthropic-beta": "oauth-2025-04-20"}
    assert oauth.grants == ("claude",)
    # Sending both names both (the Go tool's gatekeeper does the same).
    both = inject_headers([("Authorization", "Bearer p"), ("x-api-key", "p")], [ANTHROPIC, CLAUDE],
                          "api.anthropic.com")
    assert both is not None and both.grants == ("anthropic", "claude")


def test_without_a_hint_every_grant_applies_and_the_first_wins_a_shared_header() -> None:
    both = inject_headers([], [ANTHROPIC, CLAUDE], "api.anthropic.com")
    assert both is not None
    # The anthropic grant sets x-api-key; claude's removal of it does not undo what a grant set.
    assert names(both.headers) == {"x-api-key": "sk-ant-real", "authorization": "Bearer oat-real",
                                   "anthropic-beta": "oauth-2025-04-20"}
    first = GrantRules("one", injections=(HeaderInjection(("h.example",), (("X-Key", "1"),)),))
    second = GrantRules("two", injections=(HeaderInjection(("h.example",), (("X-Key", "2"),)),))
    chosen = inject_headers([], [first, second], "h.example")
    assert chosen is not None and names(chosen.headers) == {"x-key": "1"} and chosen.grants == ("one",)


def test_list_headers_are_joined_not_replaced() -> None:
    injected = inject_headers([("anthropic-beta", "tools-2024, oauth-2025-04-20"), ("Authorization", "x")],
                              [CLAUDE], "api.anthropic.com")
    assert injected is not None
    assert names(injected.headers)["anthropic-beta"] == "tools-2024,oauth-2025-04-20"
    fresh = inject_headers([("Authorization", "x")], [CLAUDE], "api.anthropic.com")
    assert fresh is not None and names(fresh.headers)["anthropic-beta"] == "oauth-2025-04-20"


def test_every_copy_of_a_replaced_header_goes() -> None:
    injected = inject_headers([("Authorization", "a"), ("authorization", "b")], [GITHUB], "api.github.com")
    assert injected is not None
    assert [v for k, v in injected.headers if k.lower() == "authorization"] == ["Bearer ghp_real"]


def test_substitution_replaces_placeholders_for_its_hosts() -> None:
    telegram = GrantRules("telegram", substitutions=(Substitution(("api.telegram.org",), "moat-0011", "123:real"),))
    rules = substitutions_for([telegram, GITHUB], "api.telegram.org")
    assert substitute("/botmoat-0011/getMe?t=moat-0011", rules) == ("/bot123:real/getMe?t=123:real", ("telegram",))
    assert substitute("/nothing", rules) == ("/nothing", ())
    assert substitute_bytes(b'{"t":"moat-0011"}', rules) == (b'{"t":"123:real"}', ("telegram",))
    assert substitutions_for([telegram], "api.telegram.org.evil") == []


def test_proxy_authorization_values() -> None:
    basic = "Basic " + base64.b64encode(b"moat:" + TOKEN.encode()).decode()
    assert token_from_header(basic) == TOKEN
    assert token_from_header(f"Bearer {TOKEN}") == TOKEN
    assert token_from_header("basic " + base64.b64encode(b"anyone:pw").decode()) == "pw"
    assert token_from_header("Basic " + base64.b64encode(b"moat:").decode()) is None
    assert token_from_header("Basic not-base64!") is None
    assert token_from_header("Digest x") is None
    assert token_from_header("") is None


def registration(run_id: str, token: str = TOKEN, **extra: object) -> Registration:
    return Registration(run_id=run_id, token=token, **extra)  # type: ignore[arg-type]


def test_the_registry_finds_runs_by_token_only() -> None:
    runs = RunRegistry()
    runs.register(registration("run_a", grants=(GITHUB,)))
    run = runs.authenticate(TOKEN)
    assert run is not None and run.run_id == "run_a"
    assert runs.authenticate(TOKEN[:-1] + "x") is None
    assert runs.authenticate("") is None
    assert run.injected_names == frozenset({"authorization"})
    assert run.masker.text("Bearer ghp_real and ghp_real") == "**** and ****"
    oauth = GrantRules("claude", injections=CLAUDE.injections, values=("oat-real",))
    runs.register(registration("run_b", "v" * 32, grants=(oauth,)))
    claude_run = runs.get("run_b")
    assert claude_run is not None and claude_run.injected_names == frozenset({"authorization"})  # not the beta


def test_a_run_registers_again_with_new_rules_and_a_token_is_one_runs() -> None:
    runs = RunRegistry()
    runs.register(registration("run_a"))
    runs.register(registration("run_a", "u" * 32))
    assert runs.authenticate(TOKEN) is None
    assert runs.authenticate("u" * 32) is not None
    with pytest.raises(ValueError, match="another run holds this proxy token"):
        runs.register(registration("run_b", "u" * 32))
    assert runs.run_ids() == ["run_a"]


def test_registrations_are_checked() -> None:
    assert validate(registration("run_a")) is None
    assert "at least" in (validate(registration("run_a", "short")) or "")
    assert validate(registration("")) is not None
    assert "absolute" in (validate(registration("run_a", trace_file="rel/trace.jsonl")) or "")
    assert "out of range" in (validate(registration("run_a", host_ports=(0,))) or "")
    assert len("x" * MIN_TOKEN_LENGTH) == MIN_TOKEN_LENGTH


def test_idle_time_counts_from_the_last_run() -> None:
    runs = RunRegistry()
    assert runs.idle_for() >= 0
    runs.register(registration("run_a"))
    assert runs.idle_for() == 0
    assert runs.unregister("run_a") is True
    assert runs.unregister("run_a") is False
    assert len(runs) == 0
    assert runs.idle_for() < 1


def test_secret_forms_include_what_a_basic_header_hides() -> None:
    basic = "Basic " + base64.b64encode(b"x-access-token:ghp_real").decode()
    forms = secret_forms([basic])
    assert {"x-access-token:ghp_real", "ghp_real", basic} <= forms


def test_the_scrubber_hides_a_secret_even_split_across_chunks_and_keeps_lengths() -> None:
    from moat.proxy.inject import Scrubber

    secret = "123456:telegram-secret-value"
    scrubber = Scrubber([secret, "short"])
    body = f'{{"text": "bot{secret}", "again": "{secret}", "tail": "sho'.encode()
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)] + [b'rt"}']
    out = b"".join(scrubber(chunk) for chunk in chunks) + scrubber(b"")
    assert len(out) == len(body) + len(b'rt"}')
    assert secret.encode() not in out and b"short" not in out
    assert out.count(b"*" * len(secret)) == 2
    assert Scrubber([secret]).text(f"Location: /bot{secret}/x") == f"Location: /bot{'*' * len(secret)}/x"


def test_the_secrets_a_host_must_not_echo_are_its_grants_only() -> None:
    from moat.proxy.inject import grant_secrets

    token = "ghp_" + "a" * 36
    bearer = HeaderInjection(("api.github.com",), (("Authorization", f"Bearer {token}"),))
    github = GrantRules("github", injections=(bearer,), values=(token,))
    assert token in grant_secrets([github], "api.github.com")
    assert grant_secrets([github], "example.com") == ()


def test_the_scrubber_holds_back_only_what_could_begin_a_secret() -> None:
    from moat.proxy.inject import Scrubber

    scrubber = Scrubber(["ghp_secretsecretsecret"])
    assert scrubber(b"data: one\n\n") == b"data: one\n\n"  # an event goes at once
    assert scrubber(b"token ghp_sec") == b"token "  # the start of a secret waits
    assert scrubber(b"retsecretsecret!") + scrubber(b"") == b"*" * 22 + b"!"


def test_a_secret_echoed_percent_encoded_or_json_escaped_is_scrubbed_too() -> None:
    from moat.proxy.inject import Scrubber, grant_secrets

    token = "123456:ABC/def+ghi"
    rules = GrantRules("telegram", substitutions=(Substitution(("api.telegram.org",), "moat-0123456789abcdef", token),))
    scrubber = Scrubber(grant_secrets([rules], "api.telegram.org"))
    for echoed in (token, "123456%3AABC%2Fdef%2Bghi", "123456%3AABC/def%2Bghi"):
        assert echoed not in scrubber.text(f"Location: /bot{echoed}/getMe")
