"""``secrets:`` references in moat.yaml, resolved on the host when a run starts (the Go tool's
schemes): ``env://VAR``, ``op://vault/item/field`` (1Password's ``op read``) and ``ssm:///path`` or
``ssm://REGION/path`` (``aws ssm get-parameter --with-decryption``).

A value never appears in an error. Neither does what ``op`` or ``aws`` wrote to stderr: it is
matched against the failures they are known to report and named in moat's words, else only the
exit status is given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moat.config.schema import SECRET_SCHEMES
from moat.credentials.command import run_helper
from moat.errors import MoatError, UsageError

OP_TIMEOUT = 120.0  # op may wait for the desktop app's approval
AWS_TIMEOUT = 60.0


class SecretError(MoatError):
    """A secret reference could not be resolved."""


@dataclass(frozen=True)
class _Known:
    needles: tuple[str, ...]  # any of these in stderr (lower case)
    reason: str
    hint: str | None = None


_OP_FAILURES = (
    _Known(("not currently signed in", "not signed in", "no accounts configured", "authorization prompt dismissed"),
           "not signed in", "Run: eval $(op signin)\nOr, for CI and automation, set OP_SERVICE_ACCOUNT_TOKEN."),
    _Known(("isn't an item", "could not be found", "no item found"), "the item or field was not found",
           "Check the reference: op://VAULT/ITEM/FIELD (`op item get ITEM` lists its fields)."),
    _Known(("isn't a vault", "vault"), "the vault was not found or is not accessible",
           "List the vaults you can read with: op vault list"),
)
_AWS_FAILURES = (
    _Known(("parameternotfound",), "parameter not found", "Check the name: aws ssm describe-parameters"),
    _Known(("accessdeniedexception", "is not authorized"), "access denied",
           "The AWS identity needs ssm:GetParameter (and kms:Decrypt for a SecureString)."),
    _Known(("kms",), "cannot decrypt the SecureString parameter", "The AWS identity needs kms:Decrypt on its key."),
    _Known(("expiredtoken", "token has expired"), "AWS credentials expired", "Refresh them (e.g. aws sso login)."),
    _Known(("unable to locate credentials",), "no AWS credentials found", "Configure them: aws configure"),
    _Known(("could not connect to the endpoint url",), "could not connect to the AWS endpoint",
           "Check the region and the network."),
)


def resolve_secret(reference: str, *, name: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The value ``reference`` names. Raises UsageError for a malformed reference, SecretError when
    resolving fails; ``name`` (the variable it is for) starts their message."""
    try:
        return _resolve(reference, os.environ if env is None else env)
    except (UsageError, SecretError) as exc:
        if not name:
            raise
        raise type(exc)(f"secret {name} ({reference[:80]}): {exc.message}", hint=exc.hint) from None


def _resolve(reference: str, env: Mapping[str, str]) -> str:
    scheme, sep, rest = reference.partition("://")
    if not sep or not scheme:
        raise UsageError(f"invalid secret reference {reference[:80]!r}: expected scheme://…",
                         hint=f"Schemes: {', '.join(s + '://' for s in SECRET_SCHEMES)}")
    if scheme == "env":
        return _from_env(rest, env)
    if scheme == "op":
        return _from_op(reference, env)
    if scheme == "ssm":
        return _from_ssm(rest, reference, env)
    raise UsageError(f"unsupported secret scheme '{scheme[:20]}' in {reference[:80]!r}",
                     hint=f"Schemes: {', '.join(s + '://' for s in SECRET_SCHEMES)}")


def _from_env(name: str, env: Mapping[str, str]) -> str:
    if not name:
        raise UsageError("invalid secret reference 'env://': the variable name is empty")
    if name not in env:  # set but empty is a value (the Go tool's rule)
        raise SecretError(f"env://{name}: {name} is not set in moat's environment",
                          hint=f"Set it before running moat: export {name}=<value>")
    return env[name]


def _from_op(reference: str, env: Mapping[str, str]) -> str:
    if len(reference.split("/")) < 5:  # op://vault/item/field: five parts once split at '/'
        raise UsageError(f"invalid 1Password reference {reference[:80]!r}: expected op://VAULT/ITEM/FIELD")
    return _run("1Password", ["op", "read", "--no-newline", reference], env, OP_TIMEOUT, _OP_FAILURES,
                missing="Install the 1Password CLI (https://1password.com/downloads/command-line/), then: op signin")


def _from_ssm(rest: str, reference: str, env: Mapping[str, str]) -> str:
    region, path = ("", rest) if rest.startswith("/") else (rest.partition("/")[0], "/" + rest.partition("/")[2])
    if path in ("", "/"):
        raise UsageError(f"invalid SSM reference {reference[:80]!r}: expected ssm:///PATH or ssm://REGION/PATH")
    argv = ["aws", "ssm", "get-parameter", "--name", path, "--with-decryption", "--query", "Parameter.Value",
            "--output", "text"]
    if region:
        argv += ["--region", region]
    value = _run("AWS SSM", argv, env, AWS_TIMEOUT, _AWS_FAILURES,
                 missing="Install the AWS CLI (https://aws.amazon.com/cli/) and configure credentials.")
    return value.removesuffix("\n")


def _run(backend: str, argv: Sequence[str], env: Mapping[str, str], timeout: float,
         known: Sequence[_Known], *, missing: str) -> str:
    program = shutil.which(argv[0], path=env.get("PATH"))
    if program is None:
        raise SecretError(f"{backend}: the {argv[0]} CLI is not installed (not found in PATH)", hint=missing)
    try:
        # stdin is moat's: op may ask on the terminal. Output is captured, never shown.
        result = run_helper([program, *argv[1:]], env, timeout, stdin_devnull=False)
    except subprocess.TimeoutExpired:
        raise SecretError(f"{backend}: `{argv[0]}` did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise SecretError(f"{backend}: `{argv[0]}` could not run: {exc.strerror}") from None
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").lower()
        for failure in known:
            if any(needle in stderr for needle in failure.needles):
                raise SecretError(f"{backend}: {failure.reason}", hint=failure.hint)
        raise SecretError(f"{backend}: `{' '.join(argv[:2])}` failed (exit status {result.returncode})",
                          hint=f"Run the command yourself to see why: {' '.join(argv)}")
    try:
        value = result.stdout.decode()
    except UnicodeDecodeError:
        raise SecretError(f"{backend}: the secret is not UTF-8 text") from None
    if "\0" in value:
        raise SecretError(f"{backend}: the secret holds a NUL character, which no environment variable can")
    return value
