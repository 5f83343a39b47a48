"""``moat grant`` and ``moat revoke``: credentials stored once on the host, encrypted, for the proxy
to put into the agent's requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moat.cli.table import echo_table

if TYPE_CHECKING:
    from moat.credentials.credential import Credential
    from moat.credentials.providers import Provider, ProviderRegistry
    from moat.credentials.store import CredentialStore

_GRANT = "_grant"  # the hidden subcommand that `moat grant PROVIDER` runs
_PROFILE_HELP = "Use this credential profile (default: $MOAT_PROFILE, else the default profile)."


def _home() -> Path:
    from moat.run.store import moat_home

    return moat_home()


def _store(profile: str | None) -> CredentialStore:
    from moat.credentials.store import CredentialStore

    return CredentialStore(_home(), profile or None)


def _registry(*, strict: bool) -> ProviderRegistry:
    """Every provider; a listing still works when a user's provider file is broken (it says so)."""
    from moat.credentials.providers import ProviderRegistry
    from moat.credentials.providers.registry import builtin_providers
    from moat.errors import ConfigError

    try:
        registry = ProviderRegistry.load(_home())
    except ConfigError as exc:
        if strict:
            raise
        click.echo(f"warning: {exc.render()}", err=True)
        return ProviderRegistry(builtin_providers(), home=_home())
    for note in registry.notes:
        click.echo(f"note: {note}", err=True)
    return registry


class _GrantGroup(click.Group):
    """A word that names a subcommand runs it; any other word is a provider to grant, and so is the
    word after ``--`` (a provider named like a subcommand)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args[:1] == ["--"] and len(args) > 1:
            args = [_GRANT, *args[2:], "--", args[1]]
        elif args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [_GRANT, *args]
        return super().parse_args(ctx, args)


class _GrantContext(click.Context):
    """The hidden subcommand is `moat grant` itself in usage lines and errors."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent else super().command_path


class _GrantCommand(click.Command):
    context_class = _GrantContext


@click.group(cls=_GrantGroup, options_metavar="",
             subcommand_metavar="PROVIDER[:SCOPES] [OPTIONS] | list | show | providers")
def grant() -> None:
    """Store a credential for a provider, encrypted under MOAT_HOME, for runs that list it in
    `grants:` (the proxy puts it into the agent's requests; the agent sees a placeholder).

    \b
    moat grant PROVIDER[:SCOPES]   store a token (github, anthropic, claude, openai, gemini, npm, …)
        --token-env VAR            read it from the variable VAR (for CI)
        --no-validate              store it without asking the provider whether it works
        --registry HOST            npm only: the registry the token is for
        --profile NAME             store it in a profile of its own
    moat grant list                the stored credentials
    moat grant show PROVIDER       one of them (the token's last 4 characters; --show-token: all)
    moat grant providers           the providers moat knows, built-in and your own

    \b
    The token is looked for, in order: --token-env, the provider's variables (GITHUB_TOKEN,
    GH_TOKEN for github, …), its CLI (`gh auth token`), then a prompt that does not echo.
    The words list, show and providers are subcommands: a provider of that name is granted
    with `moat grant -- NAME`.
    """


@grant.command(_GRANT, cls=_GrantCommand, hidden=True)
@click.argument("spec", metavar="PROVIDER[:SCOPES]")
@click.option("--token-env", metavar="VAR", help="Read the token from the environment variable VAR.")
@click.option("--no-validate", is_flag=True, help="Do not ask the provider whether the token works.")
@click.option("--registry", metavar="HOST", help="npm: the registry the token is for (default registry.npmjs.org).")
@click.option("--profile", envvar="MOAT_PROFILE", metavar="NAME", help=_PROFILE_HELP)
def grant_provider(spec: str, token_env: str | None, no_validate: bool, registry: str | None,
                   profile: str | None) -> None:
    """Store a credential for PROVIDER."""
    from moat.credentials.credential import Credential
    from moat.credentials.providers import parse_grant
    from moat.credentials.sources import acquire, click_terminal
    from moat.credentials.tokencheck import check_token

    store = _store(profile)  # a bad profile name stops before any prompt
    wanted = parse_grant(spec)
    known = _registry(strict=True)
    if known.find(wanted.provider) is None:
        _maybe_subcommand(wanted.provider)
    provider = known.get(wanted.provider)
    acquired = acquire(provider, click_terminal(), token_env=token_env, registry=registry)
    if provider.validate is not None and not no_validate:
        click.echo("Validating the token…", err=True)
        check_token(provider.name, provider.validate, acquired.token)
        click.echo("The token works.", err=True)
    credential = Credential(provider=provider.name, token=acquired.token, scopes=wanted.scopes,
                            source=acquired.source, extra=dict(acquired.extra))
    path = store.save(credential)
    click.echo(f"Credential saved to {path}" + (f" (profile: {store.profile})" if store.profile else ""))


def _maybe_subcommand(word: str) -> None:
    """`moat grant lst` meant `moat grant list` more likely than a provider called lst."""
    from moat.errors import UsageError
    from moat.suggest import closest

    meant = closest(word, [name for name in grant.commands if name != _GRANT])
    if meant:
        raise UsageError(f"unknown provider '{word}' — did you mean `moat grant {meant}`?",
                         hint="Run `moat grant --help` for the subcommands, `moat grant providers` for the providers.")


@grant.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--profile", envvar="MOAT_PROFILE", metavar="NAME", help=_PROFILE_HELP)
def list_grants(as_json: bool, profile: str | None) -> None:
    """The stored credentials (never their tokens)."""
    store = _store(profile)
    credentials = store.list()
    broken = store.unreadable()
    registry = _registry(strict=False) if credentials else None
    for name in broken:
        click.echo(f"warning: the stored credential for {name} cannot be read; `moat grant show {name}` says why",
                   err=True)
    if as_json:
        click.echo(json.dumps([_summary(c, registry) for c in credentials], indent=2))
        return
    if store.profile:
        click.echo(f"Profile: {store.profile}\n")
    if not credentials:
        click.echo("No credentials stored.\nStore one with: moat grant PROVIDER")
        return
    rows = [("PROVIDER", "TYPE", "SOURCE", "GRANTED", "EXPIRES")]
    for credential in credentials:
        info = _summary(credential, registry)
        rows.append((credential.provider, info["type"], credential.source or "-", _age(credential.created_at),
                     _expiry(credential)))
    echo_table(rows)


@grant.command("show")
@click.argument("name", metavar="PROVIDER")
@click.option("--show-token", is_flag=True, help="Print the whole token.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--profile", envvar="MOAT_PROFILE", metavar="NAME", help=_PROFILE_HELP)
def show(name: str, show_token: bool, as_json: bool, profile: str | None) -> None:
    """One stored credential: where it came from, when, and the token's last 4 characters."""
    from moat.credentials import npm
    from moat.credentials.credential import mask_token

    store = _store(profile)
    registry = _registry(strict=False)
    credential = store.get(_stored_name(store, registry, name))
    if credential is None:
        raise _not_stored(name, store)
    info = _summary(credential, registry)
    tokens = npm.registries(credential) if credential.provider == "npm" else {"": credential.token}
    if as_json:
        if credential.provider == "npm":
            info["tokens"] = {h: t if show_token else mask_token(t) for h, t in tokens.items()}
        else:
            info["token"] = credential.token if show_token else mask_token(credential.token)
        click.echo(json.dumps(info, indent=2))
        return
    rows = [("Provider:", credential.provider), ("Type:", info["type"]), ("Source:", credential.source or "-")]
    if credential.scopes:
        rows.append(("Scopes:", ", ".join(credential.scopes)))
    rows.append(("Granted:", f"{info['granted_at']} ({_age(credential.created_at)})"))
    rows.append(("Expires:", _expiry(credential)))
    for host, token in tokens.items():
        label = f"Token ({host}):" if host else "Token:"
        rows.append((label, token if show_token else mask_token(token)))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label.ljust(width)} {value}")


@grant.command("providers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def providers(as_json: bool) -> None:
    """The providers moat knows: built in, and yours in MOAT_HOME/providers/*.yaml.

    \b
    A provider file has the Go tool's keys:
      name: my-api                      # what `moat grant` and `grants:` call it
      description: My API token
      aliases: [mine]
      hosts: [api.example.com, "*.example.com"]
      inject: {header: Authorization, prefix: "Bearer "}   # omit for placeholder substitution
      source_env: [MY_API_TOKEN]        # where `moat grant` looks first
      container_env: MY_API_TOKEN       # what the agent gets: a placeholder
      validate: {url: "https://api.example.com/me"}        # optional; ${token} in the URL works
      prompt: "Create a token at https://example.com/tokens"
    """
    registry = _registry(strict=True)
    found = registry.providers()
    if as_json:
        click.echo(json.dumps([_provider_info(p) for p in found], indent=2))
        return
    rows = [("PROVIDER", "ALIASES", "TYPE", "INJECTS", "DESCRIPTION")]
    rows += [(p.name, ", ".join(p.aliases) or "-", p.origin, p.how, p.description) for p in found]
    echo_table(rows)
    click.echo(f"\nAdd your own as {_home() / 'providers'}/NAME.yaml (`moat grant providers --help` shows the keys).")


@click.command()
@click.argument("name", metavar="PROVIDER")
@click.option("--profile", envvar="MOAT_PROFILE", metavar="NAME", help=_PROFILE_HELP)
def revoke(name: str, profile: str | None) -> None:
    """Remove a stored credential (also one that can no longer be read)."""
    store = _store(profile)
    stored = _stored_name(store, _registry(strict=False), name)
    if not store.delete(stored):
        raise _not_stored(name, store)
    click.echo(f"{stored} credential revoked" + (f" (profile: {store.profile})" if store.profile else ""))


def _stored_name(store: CredentialStore, registry: ProviderRegistry, name: str) -> str:
    """The name a credential is stored under: as given, else the provider an alias names."""
    from moat.credentials.credential import check_provider_name
    from moat.credentials.providers import parse_grant

    key = check_provider_name(parse_grant(name).provider)
    if store.path_for(key).exists():
        return key
    provider = registry.find(key)
    return provider.name if provider else key


def _not_stored(name: str, store: CredentialStore) -> Exception:
    from moat.errors import UsageError

    flag = f" --profile {store.profile}" if store.profile else ""
    return UsageError(f"no credential stored for {name}" + (f" in profile {store.profile}" if store.profile else ""),
                      hint=f"Store one with `moat grant {name}{flag}`; `moat grant list{flag}` shows what is stored.")


def _summary(credential: Credential, registry: ProviderRegistry | None) -> dict[str, Any]:
    from moat.credentials.credential import iso

    provider = registry.find(credential.provider) if registry else None
    info: dict[str, Any] = {
        "provider": credential.provider,
        "type": provider.credential_type if provider else "token",
        "source": credential.source or None,
        "scopes": list(credential.scopes),
        "granted_at": iso(credential.created_at),
        "expires_at": iso(credential.expires_at) if credential.expires_at else None,
    }
    if credential.extra.get("registries"):
        info["registries"] = list(credential.extra["registries"])
    return info


def _provider_info(provider: Provider) -> dict[str, Any]:
    return {
        "provider": provider.name,
        "description": provider.description,
        "type": provider.origin,
        "aliases": list(provider.aliases),
        "hosts": list(provider.hosts),
        "injects": provider.how,
        "credential_type": provider.credential_type,
        "source_env": list(provider.source_env),
        "container_env": sorted(provider.container_env),
        "file": str(provider.file) if provider.origin == "custom" else None,
    }


def _age(moment: datetime) -> str:
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"  # pragma: no cover


def _expiry(credential: Credential) -> str:
    from moat.credentials.credential import iso

    if credential.expires_at is None:
        return "never"
    return iso(credential.expires_at) + (" (expired)" if credential.expired() else "")

