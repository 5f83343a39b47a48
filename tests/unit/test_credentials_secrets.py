"""``secrets:`` references: env://, op:// and ssm:// (the last two through stand-in ``op`` and ``aws``
programs on PATH that record their arguments). No error ever holds a value or raw stderr."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moat.credentials.secrets import SecretError, resolve_secret
from moat.errors import UsageError

SECRET = "s3cr3t-VALUE-never-shown"


def program(directory: Path, name: str, script: str) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return {"PATH": f"{directory}:/usr/bin:/bin"}


def test_env_references() -> None:
    assert resolve_secret("env://API_KEY", env={"API_KEY": SECRET}) == SECRET
    assert resolve_secret("env://EMPTY", env={"EMPTY": ""}) == ""  # set but empty is a value
    with pytest.raises(SecretError, match="API_KEY is not set") as caught:
        resolve_secret("env://API_KEY", env={})
    assert "export API_KEY=" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="variable name is empty"):
        resolve_secret("env://", env={})


@pytest.mark.parametrize(("reference", "expected"), [
    ("no-scheme", "expected scheme://"),
    ("://x", "expected scheme://"),
    ("vault://a/b", "unsupported secret scheme 'vault'"),
    ("op://vault/item", "expected op://VAULT/ITEM/FIELD"),
    ("ssm://", "expected ssm:///PATH"),
    ("ssm://us-east-1/", "expected ssm:///PATH"),
])
def test_malformed_references_are_usage_errors(reference: str, expected: str) -> None:
    with pytest.raises(UsageError, match=re.escape(expected)):
        resolve_secret(reference, env={})


def test_the_variable_name_prefixes_the_message() -> None:
    with pytest.raises(SecretError, match=r"^secret DB_PASSWORD \(env://NOPE\): env://NOPE: NOPE is not set"):
        resolve_secret("env://NOPE", name="DB_PASSWORD", env={})


def test_op_reads_the_reference(tmp_path: Path) -> None:
    args = tmp_path / "args"
    env = program(tmp_path / "bin", "op", f'echo "$@" > {args}; printf "{SECRET}"')
    assert resolve_secret("op://Private/db/password", env=env) == SECRET
    assert args.read_text().split() == ["read", "--no-newline", "op://Private/db/password"]


@pytest.mark.parametrize(("stderr", "reason", "hint"), [
    ("[ERROR] You are not currently signed in.", "not signed in", "op signin"),
    ('[ERROR] "db" isn\'t an item in the "Private" vault.', "the item or field was not found", "op item get"),
    ('[ERROR] "Nope" isn\'t a vault in this account.', "the vault was not found or is not accessible",
     "op vault list"),
])
def test_op_failures_are_named_in_moats_words(tmp_path: Path, stderr: str, reason: str, hint: str) -> None:
    (tmp_path / "stderr").write_text(f"{stderr} {SECRET}\n")
    env = program(tmp_path / "bin", "op", f"cat {tmp_path / 'stderr'} >&2; exit 1")
    with pytest.raises(SecretError) as caught:
        resolve_secret("op://Private/db/password", env=env)
    assert caught.value.message == f"1Password: {reason}"
    assert hint in (caught.value.hint or "")
    assert SECRET not in caught.value.render()


def test_an_unknown_failure_gives_the_status_not_the_stderr(tmp_path: Path) -> None:
    env = program(tmp_path, "op", f"echo 'something odd: {SECRET}' >&2; exit 3")
    with pytest.raises(SecretError, match=r"`op read` failed \(exit status 3\)") as caught:
        resolve_secret("op://Private/db/password", env=env)
    assert SECRET not in caught.value.render()


def test_a_missing_cli_says_how_to_install_it(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}
    with pytest.raises(SecretError, match="the op CLI is not installed") as caught:
        resolve_secret("op://a/b/c", env=env)
    assert "1password.com" in (caught.value.hint or "")
    with pytest.raises(SecretError, match="the aws CLI is not installed"):
        resolve_secret("ssm:///app/db", env=env)


@pytest.mark.parametrize(("reference", "expected"), [
    ("ssm:///app/db/password", ["--name", "/app/db/password"]),
    ("ssm://eu-west-1/app/db/password", ["--name", "/app/db/password", "--region", "eu-west-1"]),
])
def test_ssm_gets_the_decrypted_parameter(tmp_path: Path, reference: str, expected: list[str]) -> None:
    args = tmp_path / "args"
    env = program(tmp_path / "bin", "aws", f'echo "$@" > {args}; echo "{SECRET}"')
    assert resolve_secret(reference, env=env) == SECRET  # aws's trailing newline is not part of it
    got = args.read_text().split()
    assert got[:2] == ["ssm", "get-parameter"]
    assert "--with-decryption" in got and got[got.index("--query") + 1] == "Parameter.Value"
    for flag, value in zip(expected[::2], expected[1::2], strict=True):
        assert got[got.index(flag) + 1] == value


@pytest.mark.parametrize(("stderr", "reason"), [
    ("An error occurred (ParameterNotFound) when calling the GetParameter operation", "parameter not found"),
    ("An error occurred (AccessDeniedException)", "access denied"),
    ("Unable to locate credentials. You can configure credentials by running aws configure.",
     "no AWS credentials found"),
    ("An error occurred (ExpiredTokenException)", "AWS credentials expired"),
])
def test_ssm_failures(tmp_path: Path, stderr: str, reason: str) -> None:
    env = program(tmp_path, "aws", f"echo '{stderr}' >&2; exit 254")
    with pytest.raises(SecretError) as caught:
        resolve_secret("ssm:///app/x", env=env)
    assert caught.value.message == f"AWS SSM: {reason}"


def test_a_value_no_environment_can_hold_is_refused(tmp_path: Path) -> None:
    env = program(tmp_path, "op", "printf 'a\\000b'")
    with pytest.raises(SecretError, match="NUL"):
        resolve_secret("op://a/b/c", env=env)
