"""``moat grant`` and ``moat revoke`` driven through ``moat.cli.main.main`` with a MOAT_HOME of the
test's own, as a user runs them (stdin is not a terminal here: no prompt can hang a test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from moat.cli.main import main

TOKEN = "ghp_REALtoken0123456789abcd"
OTHER = "sk-openai-REAL-0123456789"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "moat-home"
    monkeypatch.setenv("MOAT_HOME", str(home))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no gh, op or aws of the host's
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("GITHUB_TOKEN", "GH_TOKEN", "OPENAI_API_KEY", "NPM_TOKEN", "MOAT_PROFILE", "TELEGRAM_BOT_TOKEN",
                 "MOAT_KEYRING_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield home
    keyring.set_keyring(previous)


def moat(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def grant_github(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *extra: str) -> str:
    monkeypatch.setenv("CI_TOKEN", TOKEN)
    code, out, err = moat(capsys, "grant", "github", "--token-env", "CI_TOKEN", "--no-validate", *extra)
    assert code == 0, err
    return out


def test_grant_from_token_env_then_list_show_and_revoke(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    out = grant_github(capsys, monkeypatch)
    assert out.strip() == f"Credential saved to {home / 'credentials' / 'github.enc'}"

    code, out, _ = moat(capsys, "grant", "list")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["PROVIDER", "TYPE", "SOURCE", "GRANTED", "EXPIRES"]
    assert row.split() == ["github", "token", "token-env:CI_TOKEN", "just", "now", "never"]

    code, out, _ = moat(capsys, "grant", "show", "github")
    assert code == 0
    assert "Token:    ****abcd" in out and TOKEN not in out
    assert "Source:   token-env:CI_TOKEN" in out

    code, out, _ = moat(capsys, "grant", "show", "gh", "--show-token")  # an alias finds it too
    assert code == 0 and f"Token:    {TOKEN}" in out

    code, out, _ = moat(capsys, "revoke", "github")
    assert (code, out.strip()) == (0, "github credential revoked")
    code, out, _ = moat(capsys, "grant", "list")
    assert "No credentials stored." in out


def test_json_outputs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_TOKEN", TOKEN)
    assert moat(capsys, "grant", "github:repo,gist", "--token-env", "CI_TOKEN", "--no-validate")[0] == 0
    code, out, _ = moat(capsys, "grant", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 1
    assert listed[0]["provider"] == "github" and listed[0]["scopes"] == ["repo", "gist"]
    assert listed[0]["granted_at"].endswith("Z") and listed[0]["expires_at"] is None
    assert TOKEN not in out
    shown = json.loads(moat(capsys, "grant", "show", "github", "--json")[1])
    assert shown["token"] == "****abcd" and shown["type"] == "token"
    assert json.loads(moat(capsys, "grant", "show", "github", "--json", "--show-token")[1])["token"] == TOKEN
    providers = json.loads(moat(capsys, "grant", "providers", "--json")[1])
    github = next(p for p in providers if p["provider"] == "github")
    assert github["type"] == "builtin" and github["aliases"] == ["gh"] and "GH_TOKEN" in github["container_env"]


def test_the_providers_variable_is_found_and_said(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OTHER)
    code, _, err = moat(capsys, "grant", "codex", "--no-validate")
    assert code == 0
    assert "Using the token from OPENAI_API_KEY." in err
    assert moat(capsys, "grant", "show", "openai")[0] == 0  # stored under the provider's own name


def test_no_token_without_a_terminal_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = moat(capsys, "grant", "github")
    assert code == 2
    assert "no token found for github" in err and "--token-env VAR" in err
    assert "Traceback" not in err


def test_unknown_provider_gets_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = moat(capsys, "grant", "githib")
    assert code == 2 and "unknown provider 'githib' — did you mean 'github'?" in err
    code, _, err = moat(capsys, "grant", "lst")
    assert code == 2 and "did you mean `moat grant list`?" in err


def test_subcommands_win_over_providers_and_dash_dash_reaches_the_provider(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    (home / "providers").mkdir(parents=True)
    (home / "providers" / "list.yaml").write_text(
        "name: list\ndescription: A provider called list\nhosts: [list.example]\ninject: {header: X-Key}\n")
    monkeypatch.setenv("CI_TOKEN", TOKEN)
    code, out, _ = moat(capsys, "grant", "list")
    assert code == 0 and "No credentials stored." in out
    code, out, err = moat(capsys, "grant", "--", "list", "--token-env", "CI_TOKEN")
    assert code == 0, err
    assert out.strip().endswith("list.enc")
    code, out, _ = moat(capsys, "grant", "--help")
    assert code == 0 and "moat grant -- NAME" in out


def test_options_before_the_provider(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                     home: Path) -> None:
    monkeypatch.setenv("CI_TOKEN", TOKEN)
    code, out, err = moat(capsys, "grant", "--profile", "work", "--token-env", "CI_TOKEN", "--no-validate", "github")
    assert code == 0, err
    assert out.strip() == (f"Credential saved to {home / 'credentials' / 'profiles' / 'work' / 'github.enc'}"
                           " (profile: work)")


def test_profiles_keep_credentials_apart(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    grant_github(capsys, monkeypatch, "--profile", "work")
    assert "No credentials stored." in moat(capsys, "grant", "list")[1]
    code, out, _ = moat(capsys, "grant", "list", "--profile", "work")
    assert code == 0 and out.startswith("Profile: work\n") and "github" in out
    monkeypatch.setenv("MOAT_PROFILE", "work")
    assert "github" in moat(capsys, "grant", "list")[1]
    code, _, err = moat(capsys, "revoke", "github", "--profile", "home")
    assert code == 2 and "no credential stored for github in profile home" in err
    assert moat(capsys, "revoke", "github")[1].strip() == "github credential revoked (profile: work)"
    code, _, err = moat(capsys, "grant", "list", "--profile", "../x")
    assert code == 2 and "invalid profile name" in err


def test_revoking_nothing_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = moat(capsys, "revoke", "github")
    assert code == 2
    assert "no credential stored for github" in err and "moat grant github" in err
    code, _, err = moat(capsys, "grant", "show", "github")
    assert code == 2 and "no credential stored for github" in err


def test_a_damaged_credential_is_explained_and_can_be_revoked(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    grant_github(capsys, monkeypatch)
    path = home / "credentials" / "github.enc"
    path.write_bytes(path.read_bytes()[:-3])
    code, out, err = moat(capsys, "grant", "list")
    assert code == 0 and "No credentials stored." in out
    assert "the stored credential for github cannot be read" in err
    code, _, err = moat(capsys, "grant", "show", "github")
    assert code == 1
    assert str(path) in err and "moat revoke github" in err and "Traceback" not in err
    assert moat(capsys, "revoke", "github")[0] == 0
    assert not path.exists()


def test_a_bad_provider_file_is_located(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    (home / "providers").mkdir(parents=True)
    bad = home / "providers" / "mine.yaml"
    bad.write_text("name: mine\ndescription: Mine\nhosts: [https://api.example.com]\ninject: {header: X}\n")
    code, _, err = moat(capsys, "grant", "mine")
    assert code == 2
    assert f"{bad}:3:" in err and "give the host name only" in err
    assert moat(capsys, "grant", "providers")[0] == 2
    code, _, err = moat(capsys, "grant", "list")
    assert code == 0 and "warning:" not in err  # nothing stored: the providers are not even read


def test_listing_works_beside_a_bad_provider_file(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    grant_github(capsys, monkeypatch)
    (home / "providers").mkdir(parents=True)
    (home / "providers" / "mine.yaml").write_text("name: [\n")
    code, out, err = moat(capsys, "grant", "list")
    assert code == 0 and "github" in out
    assert "warning:" in err and "mine.yaml:" in err
    (home / "providers" / "mine.yaml").unlink()
    (home / "providers" / "old.yml").write_text("name: x\n")
    code, _, err = moat(capsys, "grant", "providers")
    assert code == 0 and "old.yml is not read" in err


def test_a_custom_provider_end_to_end(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                      home: Path) -> None:
    (home / "providers").mkdir(parents=True)
    (home / "providers" / "acme.yaml").write_text(
        "name: acme\ndescription: ACME API key\naliases: [ac]\nhosts: [api.acme.example]\n"
        "inject: {header: X-Acme-Key}\nsource_env: [ACME_KEY]\ncontainer_env: ACME_KEY\n")
    monkeypatch.setenv("ACME_KEY", "acme-REAL-key-000000")
    code, _, err = moat(capsys, "grant", "ac")
    assert code == 0, err
    code, out, _ = moat(capsys, "grant", "providers")
    line = next(row for row in out.splitlines() if row.startswith("acme"))
    assert line.split()[:4] == ["acme", "ac", "custom", "X-Acme-Key"]
    assert "providers/NAME.yaml" in out
    assert "acme" in moat(capsys, "grant", "list")[1]


def test_registry_only_for_npm_and_validation_failure_stores_nothing(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("CI_TOKEN", TOKEN)
    code, _, err = moat(capsys, "grant", "github", "--token-env", "CI_TOKEN", "--registry", "x.example")
    assert code == 2 and "--registry is for npm" in err
    (home / "providers").mkdir(parents=True)
    (home / "providers" / "dead.yaml").write_text(  # validated against a port nothing listens on
        "name: dead\ndescription: d\nhosts: [127.0.0.1]\ninject: {header: X}\n"
        "validate: {url: 'http://127.0.0.1:9/check'}\n")
    code, _, err = moat(capsys, "grant", "dead", "--token-env", "CI_TOKEN")
    assert code == 1 and "did not answer" in err and "--no-validate" in err
    assert not (home / "credentials" / "dead.enc").exists()


def test_npm_grant_and_show(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    (tmp_path / ".npmrc").write_text("//npm.acme.example/:_authToken=acme-npm-token-0000\n")
    monkeypatch.setenv("NPM_TOKEN", "public-npm-token-000")
    code, _, err = moat(capsys, "grant", "npm")
    assert code == 0, err
    code, out, _ = moat(capsys, "grant", "show", "npm")
    assert "Token (npm.acme.example):   ****0000" in out
    assert "acme-npm-token" not in out
    shown = json.loads(moat(capsys, "grant", "show", "npm", "--json")[1])
    assert shown["registries"] == ["npm.acme.example", "registry.npmjs.org"]
    assert shown["tokens"] == {"npm.acme.example": "****0000", "registry.npmjs.org": "****-000"}
    assert "registry" in moat(capsys, "grant", "list")[1]


def test_no_token_is_in_clear_anywhere_under_moat_home(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    grant_github(capsys, monkeypatch)
    grant_github(capsys, monkeypatch, "--profile", "work")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:telegram-REAL-token")
    assert moat(capsys, "grant", "telegram", "--no-validate")[0] == 0
    moat(capsys, "grant", "list")
    moat(capsys, "grant", "show", "github")
    files = [p for p in home.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        data = path.read_bytes()
        for secret in (TOKEN, "123456:telegram-REAL-token"):
            assert secret.encode() not in data, path
            assert secret.encode("utf-16-le") not in data, path


def test_the_prompt_on_a_terminal_does_not_echo(tmp_path: Path, home: Path) -> None:
    """A real pseudo-terminal: the typed token is stored and never written back to the screen."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    typed = "linear-TYPED-token-0000"
    leader, follower = pty.openpty()
    env = {**os.environ, "MOAT_HOME": str(home), "LINEAR_API_KEY": ""}
    process = subprocess.Popen([sys.executable, "-m", "moat", "grant", "linear"], stdin=follower, stdout=follower,
                               stderr=follower, env=env, start_new_session=True)
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 30

    def read_until(marker: bytes) -> None:
        nonlocal screen
        while marker not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(leader, 4096)
                except OSError:  # the terminal closed: the process is gone
                    return

    try:
        read_until(b"Token: ")
        assert b"Get a Linear API key:" in screen
        os.write(leader, typed.encode() + b"\r")
        read_until(b"Credential saved")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    assert b"Credential saved to" in screen
    assert typed.encode() not in screen
    from moat.credentials.store import CredentialStore

    stored = CredentialStore(home).get("linear")
    assert stored is not None and (stored.token, stored.source) == (typed, "prompt")


def test_a_run_with_a_grant_twice_by_alias_has_it_once(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    grant_github(capsys, monkeypatch)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "moat.yaml").write_text("grants: [gh]\n")
    code, out, err = moat(capsys, "run", "--dry-run", "--json", "--runtime", "docker", str(workspace),
                          "--grant", "github:repo", "--", "true")
    assert code == 0, err
    plan = json.loads(out)
    assert [g["grant"] for g in plan["proxy"]["grants"]] == ["github"]
    assert TOKEN not in out and not (tmp_path / "moat-home" / "proxy" / "ca").exists()  # a dry run writes no CA


def test_odd_files_under_moat_home_are_errors_that_say_where(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    (home / "credentials" / "foo.enc").mkdir(parents=True)
    code, _, err = moat(capsys, "revoke", "foo")
    assert code == 1 and "cannot remove" in err and "foo.enc" in err and "internal error" not in err
    (home / "credentials" / "foo.enc").rmdir()
    (home / "credentials").rmdir()
    (home / "credentials").write_text("")
    monkeypatch.setenv("CI_TOKEN", TOKEN)
    code, _, err = moat(capsys, "grant", "github", "--token-env", "CI_TOKEN", "--no-validate")
    assert code == 1 and f"{home / 'credentials'}" in err and "internal error" not in err


def test_a_token_that_is_not_printable_ascii_is_refused(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_TOKEN", "tok\u00e9en")
    code, _, err = moat(capsys, "grant", "telegram", "--token-env", "CI_TOKEN", "--no-validate")
    assert code == 2 and "not printable ASCII" in err and "tok\u00e9en" not in err


def test_an_npm_grant_gives_the_agent_an_npmrc_with_placeholders(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("NPM_TOKEN", "npm_realSecretToken0123456789")
    code, _, err = moat(capsys, "grant", "npm", "--no-validate")
    assert code == 0, err
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "moat.yaml").write_text("grants: [npm]\n")
    code, out, err = moat(capsys, "run", "--dry-run", "--json", "--runtime", "docker", str(workspace), "--", "true")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["env"]["NPM_CONFIG_USERCONFIG"] == "/etc/moat/npm_config_userconfig"
    assert any(m["target"] == "/etc/moat/npm_config_userconfig" and m["read_only"] for m in plan["agent"]["mounts"])
    assert "npm_realSecretToken0123456789" not in out
