"""Providers: the built-ins, users' YAML files (every field, located errors), lookup by name, alias
and grant, and host patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from moat.credentials.hosts import host_matches, normalize_host, valid_pattern
from moat.credentials.providers import PROXY_INJECTED, ProviderRegistry, parse_grant
from moat.credentials.providers.model import SUBSTITUTED, TOKEN, HeaderRule
from moat.credentials.providers.registry import CORE, builtin_providers
from moat.credentials.providers.schema import parse_provider
from moat.errors import ConfigError, UsageError

GO_BUILTINS = {"brave-search", "datadog", "elevenlabs", "gitlab", "linear", "sentry", "telegram", "vercel"}

FULL = """\
name: my-api
description: "My API token"
aliases: [mine, my]
hosts:
  - api.example.com
  - "*.example.net"
inject:
  header: X-Api-Key
  prefix: "Token "
source_env: [MY_API_TOKEN, MY_TOKEN]
container_env: MY_API_TOKEN
validate:
  url: "https://api.example.com/me"
  method: post
prompt: |
  Create one at https://example.com/tokens
"""

# The GitHub token goes to its API as Bearer, and to Copilot's API hosts (one per plan).
GITHUB_API_HOSTS = ("api.github.com", "api.githubcopilot.com", "api.individual.githubcopilot.com",
                    "api.business.githubcopilot.com", "api.enterprise.githubcopilot.com")


def write_provider(home: Path, text: str, name: str = "mine.yaml") -> Path:
    directory = home / "providers"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def problems(error: ConfigError) -> list[tuple[int | None, str, str]]:
    return [(p.line, p.dotted, p.message) for p in error.problems]


# --- built-ins -------------------------------------------------------------------------------


def test_every_builtin_loads() -> None:
    names = {p.name for p in builtin_providers()}
    assert names == CORE | GO_BUILTINS
    assert all(p.origin == "builtin" and p.description for p in builtin_providers())


def test_github_uses_bearer_for_the_api_and_basic_for_git() -> None:
    github = ProviderRegistry.load(None).get("github")
    assert github.headers == (
        HeaderRule(GITHUB_API_HOSTS, "Authorization", "Bearer "),
        HeaderRule(("github.com",), "Authorization", "Basic ", basic_user="x-access-token"),
    )
    assert github.headers[1].render("tok") == "Basic eC1hY2Nlc3MtdG9rZW46dG9r"  # base64("x-access-token:tok")
    assert github.source_env == ("GITHUB_TOKEN", "GH_TOKEN")
    assert github.source_cli == ("gh", "auth", "token")
    assert github.container_env == {"GH_TOKEN": "ghp_moatProxyInjectedPlaceholder000000000000",
                                    "GIT_TERMINAL_PROMPT": "0"}
    assert "*.githubusercontent.com" in github.hosts  # hosts it may reach, not hosts that get the token
    assert github.validate is not None and github.validate.url == "https://api.github.com/user"


def test_claude_sends_the_oauth_token_as_bearer_with_its_beta_and_without_an_api_key() -> None:
    claude = ProviderRegistry.load(None).get("claude")
    assert [(r.header, r.render("t"), r.remove) for r in claude.headers] == [
        ("Authorization", "Bearer t", ("x-api-key",)),
        ("anthropic-beta", "oauth-2025-04-20", ()),
    ]
    assert claude.credential_type == "oauth"


@pytest.mark.parametrize(("name", "header", "value"), [
    ("anthropic", "x-api-key", "t"),
    ("openai", "Authorization", "Bearer t"),
    ("gemini", "x-goog-api-key", "t"),
    ("gitlab", "PRIVATE-TOKEN", "t"),
    ("sentry", "Authorization", "Bearer t"),
    ("linear", "Authorization", "t"),
])
def test_single_header_builtins(name: str, header: str, value: str) -> None:
    provider = ProviderRegistry.load(None).get(name)
    assert [(r.header, r.render("t")) for r in provider.headers] == [(header, value)]
    assert not provider.substitution


def test_telegram_substitutes_and_npm_is_per_registry() -> None:
    registry = ProviderRegistry.load(None)
    telegram = registry.get("tg")
    assert telegram.substitution and telegram.container_env == {"TELEGRAM_BOT_TOKEN": SUBSTITUTED}
    assert telegram.validate is not None and telegram.validate.headers == ()  # the token is in its URL
    npm = registry.get("npm")
    assert npm.kind == "npm" and not npm.substitution and npm.container_env == {}


# --- users' files ----------------------------------------------------------------------------


def test_a_user_file_with_every_field(tmp_path: Path) -> None:
    path = write_provider(tmp_path, FULL)
    provider = ProviderRegistry.load(tmp_path).get("my-api")
    assert provider.origin == "custom" and provider.file == path
    assert provider.description == "My API token"
    assert provider.aliases == ("mine", "my")
    assert provider.hosts == ("api.example.com", "*.example.net")
    assert provider.headers == (HeaderRule(("api.example.com", "*.example.net"), "X-Api-Key", "Token "),)
    assert provider.source_env == ("MY_API_TOKEN", "MY_TOKEN")
    assert provider.container_env == {"MY_API_TOKEN": PROXY_INJECTED}
    assert provider.validate is not None
    assert provider.validate.method == "POST"
    assert provider.validate.headers == (("X-Api-Key", "Token " + TOKEN),)  # validate inherits inject's prefix
    assert provider.prompt.startswith("Create one at")


def test_without_inject_header_a_user_provider_substitutes(tmp_path: Path) -> None:
    write_provider(tmp_path, "name: bot\ndescription: Bot\nhosts: [bot.example.com]\ncontainer_env: BOT_TOKEN\n"
                             "validate: {url: 'https://bot.example.com/bot${token}/me'}\n")
    provider = ProviderRegistry.load(tmp_path).get("bot")
    assert provider.substitution
    assert provider.container_env == {"BOT_TOKEN": SUBSTITUTED}
    assert provider.validate is not None and provider.validate.headers == ()


def test_validate_header_and_prefix_follow_the_go_rules() -> None:
    text = "name: a\ndescription: A\nhosts: [a.example]\ninject: {header: X-Key, prefix: 'P '}\n"
    own = parse_provider(text + "validate: {url: 'https://a.example/', header: Authorization}\n",
                         file=None, origin="custom")
    assert own.validate is not None and own.validate.headers == (("Authorization", TOKEN),)  # no inherited prefix
    prefixed = parse_provider(text + "validate: {url: 'https://a.example/', prefix: 'Bearer '}\n",
                              file=None, origin="custom")
    assert prefixed.validate is not None and prefixed.validate.headers == (("X-Key", "Bearer " + TOKEN),)


def test_bad_file_problems_are_located_with_lines(tmp_path: Path) -> None:
    path = write_provider(tmp_path, """\
name: my-api
description: ""
hosts:
  - https://api.example.com/v1
  - "api.*.com"
inject:
  headr: X-Key
source_env: [MY-TOKEN]
validate:
  url: ftp://example.com
""")
    with pytest.raises(ConfigError) as caught:
        ProviderRegistry.load(tmp_path)
    error = caught.value
    assert error.file == path
    found = problems(error)
    assert (2, "description", "must not be empty") in found
    assert any(line == 4 and dotted == "hosts[0]" and "give the host name only" in m for line, dotted, m in found)
    assert any(line == 5 and dotted == "hosts[1]" and "wildcard" in m for line, dotted, m in found)
    assert any(line == 7 and "unknown key 'headr'" in m and "did you mean 'header'" in m for line, _, m in found)
    assert any(line == 8 and dotted == "source_env[0]" for line, dotted, _ in found)
    assert any(line == 10 and dotted == "validate.url" for line, dotted, _ in found)
    assert f"{path}:2:" in error.render()


def test_missing_keys_and_a_provider_that_injects_nothing(tmp_path: Path) -> None:
    write_provider(tmp_path, "description: x\n")
    with pytest.raises(ConfigError) as caught:
        ProviderRegistry.load(tmp_path)
    messages = [m for _, _, m in problems(caught.value)]
    assert "required key 'name' is missing" in messages
    assert "required key 'hosts' is missing" in messages
    write_provider(tmp_path, "name: x\ndescription: x\nhosts: [x.example]\n")
    with pytest.raises(ConfigError, match=r"inject\.header or container_env is required"):
        ProviderRegistry.load(tmp_path)
    write_provider(tmp_path, "name: x\ndescription: x\nhosts: []\ncontainer_env: X\n")
    with pytest.raises(ConfigError, match="at least one host is required"):
        ProviderRegistry.load(tmp_path)


def test_builtin_only_keys_are_refused_in_user_files(tmp_path: Path) -> None:
    write_provider(tmp_path, "name: x\ndescription: x\nhosts: [x.example]\ninject: {header: X}\n"
                             "source_cli: [cat, token]\nenv: {A: b}\n")
    with pytest.raises(ConfigError) as caught:
        ProviderRegistry.load(tmp_path)
    found = problems(caught.value)
    assert [(line, dotted) for line, dotted, _ in found] == [(5, "source_cli"), (6, "env")]
    assert all("built-in providers only" in m for _, _, m in found)


@pytest.mark.parametrize(("text", "expected"), [
    ("name: [", "YAML syntax error"),
    ("- a\n- b\n", "a provider file is a mapping"),
    ("name: x\nname: y\n", "duplicate key 'name'"),
    ("name: Bad Name\ndescription: x\nhosts: [a.b]\ncontainer_env: X\n", "lowercase letters"),
    ("name: x\ndescription: x\nhosts: [a.b]\ncontainer_env: 'A B'\n", "a variable name"),
    ("name: x\ndescription: x\nhosts: [a.b]\ninject: {header: 'X: y'}\n", "an HTTP header name"),
    ("name: x\ndescription: x\nhosts: [a.b]\ninject: {prefix: 'Bearer '}\ncontainer_env: X\n",
     r"inject\.prefix needs inject\.header"),
])
def test_malformed_files(tmp_path: Path, text: str, expected: str) -> None:
    write_provider(tmp_path, text)
    with pytest.raises(ConfigError, match=expected):
        ProviderRegistry.load(tmp_path)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    path = write_provider(tmp_path, "")
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ProviderRegistry.load(tmp_path)
    path.write_text("# " + "x" * 70_000 + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        ProviderRegistry.load(tmp_path)


def test_a_user_file_replaces_a_go_yaml_builtin_but_not_a_core_one(tmp_path: Path) -> None:
    write_provider(tmp_path, "name: gitlab\ndescription: Our GitLab\nhosts: [git.example.com]\n"
                             "inject: {header: PRIVATE-TOKEN}\n", "gitlab.yaml")
    github = write_provider(tmp_path, "name: github\ndescription: Mine\nhosts: [x.example]\ncontainer_env: X\n",
                            "github.yaml")
    registry = ProviderRegistry.load(tmp_path)
    gitlab = registry.get("gitlab")
    assert gitlab.origin == "custom" and gitlab.hosts == ("git.example.com",)
    assert registry.find("gl") is None  # the replaced built-in's alias went with it
    assert registry.get("github").origin == "builtin"
    assert any(str(github) in note and "cannot replace" in note for note in registry.notes)


def test_yml_files_are_pointed_out_not_read(tmp_path: Path) -> None:
    path = write_provider(tmp_path, "name: x\ndescription: x\nhosts: [a.b]\ncontainer_env: X\n", "x.yml")
    registry = ProviderRegistry.load(tmp_path)
    assert registry.find("x") is None
    assert any(str(path) in note for note in registry.notes)


def test_two_files_may_not_define_one_provider(tmp_path: Path) -> None:
    text = "name: x\ndescription: x\nhosts: [a.b]\ncontainer_env: X\n"
    write_provider(tmp_path, text, "a.yaml")
    second = write_provider(tmp_path, text, "b.yaml")
    with pytest.raises(ConfigError, match="also defined in") as caught:
        ProviderRegistry.load(tmp_path)
    assert caught.value.file == second and caught.value.problems[0].line == 1


def test_aliases_may_not_take_another_providers_name(tmp_path: Path) -> None:
    write_provider(tmp_path, "name: x\ndescription: x\naliases: [y, github]\nhosts: [a.b]\ncontainer_env: X\n")
    with pytest.raises(ConfigError, match="alias 'github' already names provider 'github'") as caught:
        ProviderRegistry.load(tmp_path)
    assert caught.value.problems[0].line == 3
    write_provider(tmp_path, "name: gl\ndescription: x\nhosts: [a.b]\ncontainer_env: X\n")
    with pytest.raises(ConfigError, match="'gl' is already an alias of provider 'gitlab'"):
        ProviderRegistry.load(tmp_path)


def test_a_missing_providers_directory_is_normal(tmp_path: Path) -> None:
    assert ProviderRegistry.load(tmp_path).names() == sorted(CORE | GO_BUILTINS)


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_by_alias_and_grant_with_scopes() -> None:
    registry = ProviderRegistry.load(None)
    assert registry.get("codex").name == "openai"
    assert registry.get("google").name == "gemini"
    assert registry.get("github:repo,gist").name == "github"
    assert registry.get(" GitHub ").name == "github"
    assert parse_grant("github:repo, gist,,repo").scopes == ("repo", "gist")
    assert str(parse_grant("github:repo,gist")) == "github:repo,gist"
    assert str(parse_grant("github")) == "github"


def test_unknown_names_get_a_did_you_mean(tmp_path: Path) -> None:
    registry = ProviderRegistry.load(tmp_path)
    with pytest.raises(UsageError, match="unknown provider 'githb' — did you mean 'github'") as caught:
        registry.get("githb")
    assert "moat grant providers" in (caught.value.hint or "")
    assert str(tmp_path / "providers") in (caught.value.hint or "")
    with pytest.raises(UsageError, match="did you mean 'telegram'"):
        registry.get("telegarm:x")
    with pytest.raises(UsageError) as unrelated:
        registry.get("zzzz")
    assert "did you mean" not in unrelated.value.message


# --- host patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("api.github.com", "api.github.com", True),
    ("api.github.com", "API.GitHub.com.", True),
    ("api.github.com", "github.com", False),
    ("*.gitlab.com", "a.gitlab.com", True),
    ("*.gitlab.com", "a.b.gitlab.com", True),
    ("*.gitlab.com", "gitlab.com", False),
    ("*.gitlab.com", "evilgitlab.com", False),
    ("github.com", "github.com.evil.example", False),
    ("[::1]", "::1", True),
    ("", "x", False),
])
def test_host_matching(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


def test_host_patterns_are_validated() -> None:
    assert valid_pattern("api.example.com") is None
    assert valid_pattern("*.example.com") is None
    for bad in ("", "https://x.com", "x.com/path", "a.*.com", "x.com:443", "bad host"):
        assert valid_pattern(bad) is not None, bad
    assert normalize_host(" [::1] ") == "::1"


def test_a_pattern_with_a_port_names_that_port_of_the_host_alone() -> None:
    from moat.credentials.hosts import any_host_matches

    assert any_host_matches(("moat-host:8787",), "moat-host:8787")
    assert not any_host_matches(("moat-host:8787",), "moat-host:5432")
    assert not any_host_matches(("moat-host:8787",), "moat-host")
    assert any_host_matches(("moat-host",), "moat-host:5432")  # without a port: every port of the name
    assert any_host_matches(("*.example.com",), "api.example.com:443")
    assert not any_host_matches(("moat-host:8787",), "evil-moat-host:8787")
