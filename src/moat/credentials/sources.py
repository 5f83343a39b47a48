"""Where ``moat grant`` finds a token, in the Go tool's order: ``--token-env VAR`` (asked for by
name, so first), the provider's variables, the provider's own CLI (``gh auth token``), then a prompt
that does not echo, on a terminal only. Nothing found is a usage error saying what would work.

A token is never printed, and neither is what a CLI wrote to stderr (it may hold one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from moat.credentials import npm
from moat.credentials.command import run_helper
from moat.credentials.credential import token_problem
from moat.credentials.providers.model import Provider
from moat.errors import MoatError, UsageError

CLI_TIMEOUT = 10.0  # seconds for `gh auth token`: it reads a file or the keychain

Say = Callable[[str], None]
Ask = Callable[[str], str]  # prompts without echo
Confirm = Callable[[str], bool]


@dataclass(frozen=True, repr=False)
class Acquired:
    token: str
    source: str  # "token-env:VAR", "env:VAR", "cli:gh", "prompt", "npmrc", …
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Acquired(source={self.source!r})"


@dataclass
class Terminal:
    """How ``acquire`` talks to the user; the CLI's is click's, tests give their own."""

    interactive: bool
    say: Say
    ask: Ask
    confirm: Confirm


def click_terminal() -> Terminal:
    return Terminal(
        interactive=sys.stdin.isatty(),
        say=lambda text: click.echo(text, err=True),
        ask=lambda label: str(click.prompt(label, hide_input=True, err=True)),
        confirm=lambda question: click.confirm(question, default=True, err=True),
    )


def acquire(provider: Provider, terminal: Terminal, *, token_env: str | None = None, registry: str | None = None,
            env: Mapping[str, str] | None = None) -> Acquired:
    env = os.environ if env is None else env
    if registry is not None and provider.kind != "npm":
        raise UsageError(f"--registry is for npm; {provider.name} has no registries")
    if provider.kind == "npm":
        return _acquire_npm(provider, terminal, token_env, registry, env)
    if token_env:
        return Acquired(_from_variable(token_env, env, flag=True), f"token-env:{token_env}")
    for name in provider.source_env:
        if env.get(name, "").strip():
            token = _from_variable(name, env, flag=False)
            terminal.say(f"Using the token from {name}.")
            return Acquired(token, f"env:{name}")
    if provider.source_cli:
        printed = _from_cli(provider.source_cli, env, terminal)
        if printed is not None:
            return Acquired(printed, f"cli:{os.path.basename(provider.source_cli[0])}")
    if terminal.interactive:
        terminal.say(provider.prompt.rstrip("\n") if provider.prompt else f"Enter a {provider.description} token.")
        return Acquired(_typed(terminal.ask("Token")), "prompt")
    raise UsageError(f"no token found for {provider.name}", hint=_what_would_work(provider))


def _what_would_work(provider: Provider) -> str:
    ways = []
    if provider.source_env:
        ways.append(f"set {' or '.join(provider.source_env)}")
    if provider.source_cli:
        ways.append(f"make `{' '.join(provider.source_cli)}` work (log in with its CLI)")
    ways.append("pass --token-env VAR naming a variable that holds it")
    ways.append(f"run `moat grant {provider.name}` on a terminal to type it")
    return "To grant it: " + "; or ".join(ways) + "."


def _from_variable(name: str, env: Mapping[str, str], *, flag: bool) -> str:
    where = f"--token-env {name}" if flag else name
    value = env.get(name, "").strip()
    if not value:
        raise UsageError(f"{where}: the variable is not set or is empty",
                         hint=f"Export the token first: export {name}=<token>")
    problem = token_problem(value)
    if problem:
        raise UsageError(f"{where}: {problem}")
    return value


def _typed(value: str) -> str:
    token = value.strip()
    problem = token_problem(token)
    if problem:
        raise UsageError(f"no usable token was typed: {problem}")
    return token


def _from_cli(argv: tuple[str, ...], env: Mapping[str, str], terminal: Terminal) -> str | None:
    """The token the provider's CLI prints, or None (not installed, failed, declined)."""
    program = shutil.which(argv[0], path=env.get("PATH"))
    if program is None:
        return None
    command = f"`{' '.join(argv)}`"
    try:
        result = run_helper([program, *argv[1:]], env, CLI_TIMEOUT, stdin_devnull=True)
    except subprocess.TimeoutExpired:
        terminal.say(f"Note: {command} did not answer within {CLI_TIMEOUT:.0f} s; not using it.")
        return None
    except OSError as exc:
        terminal.say(f"Note: {command} could not run ({exc.strerror}); not using it.")
        return None
    token = result.stdout.decode(errors="replace").strip()
    # Its stderr is not shown: a CLI may print a token or a session there.
    if result.returncode != 0 or not token:
        terminal.say(f"Note: {command} gave no token (exit status {result.returncode}); you may need to log in with"
                     f" `{argv[0]}` first.")
        return None
    if token_problem(token):
        terminal.say(f"Note: {command} printed something that is not a token; not using it.")
        return None
    if terminal.interactive and not terminal.confirm(f"Found a token with {command}. Use it?"):
        return None
    terminal.say(f"Using the token from {command}.")
    return token


def _acquire_npm(provider: Provider, terminal: Terminal, token_env: str | None, registry: str | None,
                 env: Mapping[str, str]) -> Acquired:
    """Every registry token found: ~/.npmrc's, NPM_TOKEN for the public registry where .npmrc has
    none, and the one given (``--token-env`` or typed) for ``--registry`` (default the public one)."""
    tokens, scopes = npm.read_npmrc(env)
    sources = ["npmrc"] if tokens else []
    host = npm.check_registry(registry) if registry else npm.DEFAULT_REGISTRY
    for name in provider.source_env:
        if env.get(name, "").strip() and npm.DEFAULT_REGISTRY not in tokens:
            tokens[npm.DEFAULT_REGISTRY] = _from_variable(name, env, flag=False)
            sources.append(f"env:{name}")
    if token_env:
        tokens[host] = _from_variable(token_env, env, flag=True)
        sources.append(f"token-env:{token_env}")
    elif host not in tokens and (registry or not tokens):
        if not terminal.interactive:
            raise UsageError(f"no npm token found for {host}",
                             hint=f"Add it to {npm.npmrc_path(env)} (//{host}/:_authToken=…), set NPM_TOKEN, or pass"
                                  " --token-env VAR; or run `moat grant npm` on a terminal to type it.")
        terminal.say(provider.prompt.rstrip("\n"))
        tokens[host] = _typed(terminal.ask(f"Token for {host}"))
        sources.append("prompt")
    if not tokens:  # pragma: no cover — every branch above adds one or raises
        raise MoatError("no npm token found")
    terminal.say(f"npm registries: {', '.join(sorted(tokens))}.")
    kept = {h: sorted(s) for h, s in scopes.items() if h in tokens}
    return Acquired(npm.credential_token(tokens), "+".join(sources), {"registries": sorted(tokens), "scopes": kept})
