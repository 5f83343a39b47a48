"""Where ``moat grant`` finds a token, and in which order: --token-env, the provider's variables, its
CLI (a real program on PATH here), then a prompt on a terminal only."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from moat.credentials import npm, sources
from moat.credentials.providers import ProviderRegistry
from moat.credentials.sources import Acquired, Terminal, acquire
from moat.errors import UsageError

REGISTRY = ProviderRegistry.load(None)
GITHUB = REGISTRY.get("github")


class FakeTerminal(Terminal):
    def __init__(self, *, interactive: bool = False, typed: str = "", answer: bool = True) -> None:
        self.said: list[str] = []
        self.asked: list[str] = []
        self.confirmed: list[str] = []

        def ask(label: str) -> str:
            self.asked.append(label)
            return typed

        def confirm(question: str) -> bool:
            self.confirmed.append(question)
            return answer

        super().__init__(interactive, self.said.append, ask, confirm)


def fake_cli(directory: Path, name: str, script: str) -> dict[str, str]:
    """A program called ``name`` on a PATH of its own; returns that environment."""
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / name
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    return {"PATH": f"{directory}:/usr/bin:/bin", "HOME": str(directory)}


def test_token_env_comes_first(tmp_path: Path) -> None:
    env = {**fake_cli(tmp_path, "gh", "echo cli-token-0000"), "CI_TOKEN": " ci-token-000 ", "GITHUB_TOKEN": "env-tok"}
    got = acquire(GITHUB, FakeTerminal(), token_env="CI_TOKEN", env=env)
    assert (got.token, got.source) == ("ci-token-000", "token-env:CI_TOKEN")


def test_token_env_that_is_unset_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--token-env CI_TOKEN: the variable is not set") as caught:
        acquire(GITHUB, FakeTerminal(), token_env="CI_TOKEN", env={"GITHUB_TOKEN": "x" * 20})
    assert "export CI_TOKEN=" in (caught.value.hint or "")


def test_the_providers_variables_in_order_before_the_cli(tmp_path: Path) -> None:
    env = {**fake_cli(tmp_path, "gh", "echo cli-token-0000"), "GH_TOKEN": "second-000", "GITHUB_TOKEN": "first-000"}
    terminal = FakeTerminal()
    got = acquire(GITHUB, terminal, env=env)
    assert (got.token, got.source) == ("first-000", "env:GITHUB_TOKEN")
    assert terminal.said == ["Using the token from GITHUB_TOKEN."]
    del env["GITHUB_TOKEN"]
    assert acquire(GITHUB, FakeTerminal(), env=env).source == "env:GH_TOKEN"
    env["GH_TOKEN"] = "   "  # blank counts as unset
    assert acquire(GITHUB, FakeTerminal(), env=env).source == "cli:gh"


def test_the_cli_token_is_used_without_a_terminal_and_confirmed_on_one(tmp_path: Path) -> None:
    env = fake_cli(tmp_path, "gh", 'test "$1 $2" = "auth token" && echo gho_cli_token_0000')
    got = acquire(GITHUB, FakeTerminal(), env=env)
    assert (got.token, got.source) == ("gho_cli_token_0000", "cli:gh")
    terminal = FakeTerminal(interactive=True)
    assert acquire(GITHUB, terminal, env=env).token == "gho_cli_token_0000"
    assert terminal.confirmed == ["Found a token with `gh auth token`. Use it?"]


def test_declining_the_cli_token_goes_to_the_prompt(tmp_path: Path) -> None:
    env = fake_cli(tmp_path, "gh", "echo gho_cli_token_0000")
    terminal = FakeTerminal(interactive=True, answer=False, typed="  typed-token-000  ")
    got = acquire(GITHUB, terminal, env=env)
    assert (got.token, got.source) == ("typed-token-000", "prompt")
    assert terminal.asked == ["Token"]
    assert "Create a GitHub personal access token" in terminal.said[0]


def test_a_failing_cli_is_noted_without_its_stderr(tmp_path: Path) -> None:
    env = fake_cli(tmp_path, "gh", "echo 'oauth_token: gho_LEAKED_in_stderr' >&2; exit 4")
    terminal = FakeTerminal(interactive=True, typed="typed-token-000")
    assert acquire(GITHUB, terminal, env=env).source == "prompt"
    note = terminal.said[0]
    assert "exit status 4" in note and "log in" in note
    assert "LEAKED" not in " ".join(terminal.said)


def test_a_cli_that_hangs_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CLI_TIMEOUT", 0.3)
    pid_file = tmp_path / "helper.pid"
    env = fake_cli(tmp_path / "bin", "gh", f"sleep 30 & echo $! > {pid_file}; wait; echo late-token-0000")
    terminal = FakeTerminal()
    started = time.monotonic()
    with pytest.raises(UsageError, match="no token found for github"):
        acquire(GITHUB, terminal, env=env)
    assert time.monotonic() - started < 5
    assert "did not answer" in terminal.said[0]
    helper = Path(f"/proc/{pid_file.read_text().strip()}")
    deadline = time.monotonic() + 5
    while helper.exists() and "State:\tZ" not in _status(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not helper.exists() or "State:\tZ" in _status(helper), "the helper's own child outlived the deadline"


def _status(proc: Path) -> str:
    try:
        return (proc / "status").read_text()
    except OSError:
        return "State:\tZ"


def test_a_cli_that_prints_garbage_is_not_a_token(tmp_path: Path) -> None:
    env = fake_cli(tmp_path, "gh", "printf 'two words\\n'")
    terminal = FakeTerminal()
    with pytest.raises(UsageError):
        acquire(GITHUB, terminal, env=env)
    assert "not a token" in terminal.said[0]


def test_nothing_found_without_a_terminal_says_what_would_work(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no token found for github") as caught:
        acquire(GITHUB, FakeTerminal(), env={"PATH": str(tmp_path)})
    hint = caught.value.hint or ""
    for way in ("GITHUB_TOKEN or GH_TOKEN", "`gh auth token`", "--token-env VAR", "on a terminal"):
        assert way in hint


def test_the_prompt_uses_the_providers_text_or_its_description(tmp_path: Path) -> None:
    terminal = FakeTerminal(interactive=True, typed="brave-token-0000")
    got = acquire(REGISTRY.get("brave"), terminal, env={"PATH": str(tmp_path)})
    assert got.source == "prompt"
    assert terminal.said[0].startswith("Get a Brave Search API key:")
    custom = REGISTRY.get("brave").__class__(name="x", description="Example API", hosts=("x.example",),
                                             container_env={"X": "y"})
    terminal = FakeTerminal(interactive=True, typed="x-token-0000")
    acquire(custom, terminal, env={})
    assert terminal.said == ["Enter a Example API token."]


@pytest.mark.parametrize("bad", ["", "   ", "two words", "line\nbreak", "tab\tin", "nul\0"])
def test_tokens_that_cannot_be_tokens_are_refused_without_being_quoted(bad: str) -> None:
    terminal = FakeTerminal(interactive=True, typed=bad)
    with pytest.raises(UsageError) as caught:
        acquire(REGISTRY.get("linear"), terminal, env={})
    if bad.strip():
        assert bad not in caught.value.render()
    with pytest.raises(UsageError):
        acquire(REGISTRY.get("linear"), FakeTerminal(), token_env="T", env={"T": bad})


def test_acquired_repr_hides_the_token() -> None:
    assert "secret-value" not in repr(Acquired("secret-value", "prompt"))


def test_registry_is_for_npm_only() -> None:
    with pytest.raises(UsageError, match="--registry is for npm"):
        acquire(GITHUB, FakeTerminal(), registry="x.example", env={"GITHUB_TOKEN": "x" * 20})


# --- npm ---------------------------------------------------------------------------------------


NPMRC = """\
; comment
# another
@acme:registry=https://npm.acme.example/
@tools:registry=https://npm.acme.example/
//npm.acme.example/:_authToken=acme-token-0000
//registry.npmjs.org/:_authToken=${NPM_TOKEN}
//npm.pkg.github.com/path/:_authToken="gh-npm-token-000"
registry=https://registry.npmjs.org/
"""


def test_npmrc_parsing() -> None:
    tokens, scopes = npm.parse_npmrc(NPMRC)
    assert tokens == {"npm.acme.example": "acme-token-0000", "npm.pkg.github.com": "gh-npm-token-000"}
    assert scopes == {"npm.acme.example": ["@acme", "@tools"]}


def test_npm_collects_npmrc_and_npm_token(tmp_path: Path) -> None:
    (tmp_path / ".npmrc").write_text(NPMRC)
    env = {"HOME": str(tmp_path), "NPM_TOKEN": "public-token-0000"}
    got = acquire(REGISTRY.get("npm"), FakeTerminal(), env=env)
    assert json.loads(got.token) == {"npm.acme.example": "acme-token-0000", "npm.pkg.github.com": "gh-npm-token-000",
                                     "registry.npmjs.org": "public-token-0000"}
    assert got.source == "npmrc+env:NPM_TOKEN"
    assert got.extra == {"registries": ["npm.acme.example", "npm.pkg.github.com", "registry.npmjs.org"],
                         "scopes": {"npm.acme.example": ["@acme", "@tools"]}}


def test_npm_userconfig_and_token_env_for_a_registry(tmp_path: Path) -> None:
    rc = tmp_path / "custom-npmrc"
    rc.write_text("//registry.npmjs.org/:_authToken=from-file-0000\n")
    env = {npm.ENV_USERCONFIG: str(rc), "MY": "private-0000"}
    got = acquire(REGISTRY.get("npm"), FakeTerminal(), token_env="MY", registry="https://npm.corp.example/", env=env)
    assert json.loads(got.token) == {"registry.npmjs.org": "from-file-0000", "npm.corp.example": "private-0000"}


def test_npm_without_any_token_needs_a_terminal(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    with pytest.raises(UsageError, match=r"no npm token found for registry\.npmjs\.org"):
        acquire(REGISTRY.get("npm"), FakeTerminal(), env=env)
    terminal = FakeTerminal(interactive=True, typed="typed-npm-0000")
    got = acquire(REGISTRY.get("npm"), terminal, env=env)
    assert json.loads(got.token) == {"registry.npmjs.org": "typed-npm-0000"}
    assert terminal.asked == ["Token for registry.npmjs.org"]
    with pytest.raises(UsageError, match="--registry"):
        acquire(REGISTRY.get("npm"), FakeTerminal(), registry="*.bad", env=env)


def test_the_agents_npmrc_has_placeholders_only() -> None:
    from moat.credentials.credential import Credential

    token = npm.credential_token({"npm.acme.example": "acme-token-0000", "registry.npmjs.org": "pub-0000"})
    text = npm.npmrc_text(Credential("npm", token, extra={"scopes": {"npm.acme.example": ["@acme"]}}))
    assert text == ("@acme:registry=https://npm.acme.example/\n"
                    f"//npm.acme.example/:_authToken={npm.PLACEHOLDER}\n"
                    f"//registry.npmjs.org/:_authToken={npm.PLACEHOLDER}\n")
    assert "acme-token" not in text


def test_fake_cli_really_runs(tmp_path: Path) -> None:
    env = fake_cli(tmp_path, "gh", "exit 0")
    assert os.access(Path(env["PATH"].split(":")[0]) / "gh", os.X_OK)


def test_an_npmrc_pattern_or_port_never_widens_where_the_token_goes() -> None:
    tokens, _ = npm.parse_npmrc("//*.x.com/:_authToken=abc123\n//bad host/:_authToken=abc123\n"
                                "//registry.example:8443/:_authToken=abc123\n")
    assert tokens == {"registry.example": "abc123"}  # no wildcard, no name with a space; the host of a port
