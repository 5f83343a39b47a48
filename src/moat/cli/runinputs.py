"""What ``moat run`` reads from the host before planning: the run's grants, from the credential store,
and moat.yaml's secrets, from their resolvers. Everything is checked before anything starts: a
missing grant or an unresolvable secret stops the run with what to do, and nothing to clean up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from moat.config.load import Config
from moat.errors import ConfigError, Located, UsageError
from moat.plan.proxy import ResolvedGrant

# The credential store, the providers and moat's CA cost imports (cryptography, the providers' YAML):
# loaded only by runs that have grants.


def grant_names(configured: Iterable[str], given: Iterable[str]) -> list[str]:
    """moat.yaml's grants, then --grant's (``resolve_grants`` keeps each provider once, the later
    spelling winning, whether it is named by its name or an alias)."""
    return [name.strip() for name in (*configured, *given)]


def check_configured_grants(config: Config, home: Path) -> None:
    """moat.yaml's grants name known providers: a typo is a located error with a suggestion, as any
    other mistake in the file."""
    if not config.model.grants:
        return
    from moat.credentials.providers.registry import ProviderRegistry, parse_grant
    from moat.suggest import did_you_mean

    providers = ProviderRegistry.load(home)
    known = [*providers.names(), *(a for p in providers.providers() for a in p.aliases)]
    problems = []
    for index, name in enumerate(config.model.grants):
        if providers.find(name) is None:
            key = parse_grant(name).provider
            problems.append(Located(("grants", index), f"unknown provider '{key[:64]}'{did_you_mean(key, known)}",
                                    *config.marks.locate(("grants", index))))
    if problems:
        raise ConfigError(config.file, problems, hint="`moat grant providers` lists them; your own go in"
                                                      f" {home / 'providers'}/NAME.yaml.")


def resolve_grants(names: list[str], home: Path, run_id: str, profile: str | None) -> tuple[ResolvedGrant, ...]:
    """Each grant with its stored credential turned into the proxy's rules; every missing one said at once."""
    if not names:
        return ()
    from moat.credentials import npm
    from moat.credentials.injection import rules_for
    from moat.credentials.providers.registry import ProviderRegistry, parse_grant
    from moat.credentials.store import CredentialStore

    providers = ProviderRegistry.load(home)
    store = CredentialStore(home, profile)
    chosen: dict[str, str] = {}  # provider → the grant as written (an alias and its name are one grant)
    for name in names:
        provider = providers.get(name)  # an unknown name: a usage error with a did-you-mean
        chosen.pop(provider.name, None)
        chosen[provider.name] = name
    resolved: list[ResolvedGrant] = []
    missing: list[str] = []
    for provider_name, name in chosen.items():
        provider = providers.get(provider_name)
        credential = store.get(provider.name)
        if credential is None:
            missing.append(provider.name)
            continue
        rules, env = rules_for(provider, credential, run_id, grant=provider.name)
        scopes = parse_grant(name).scopes
        # npm sends a registry's token (and knows a scope's registry) only from its .npmrc: one with
        # placeholders, where NPM_CONFIG_USERCONFIG points.
        files = {npm.USERCONFIG_VARIABLE: npm.npmrc_text(credential)} if provider.kind == "npm" else {}
        resolved.append(ResolvedGrant(provider.name + (f":{','.join(scopes)}" if scopes else ""), rules, env,
                                      files))
    if missing:
        where = f" in profile '{profile}'" if profile else ""
        commands = "; ".join(f"`moat grant {m}" + (f" --profile {profile}" if profile else "") + "`" for m in missing)
        raise UsageError(f"no credential stored{where} for {', '.join(missing)}: the run needs "
                         f"{'it' if len(missing) == 1 else 'them'} for its grants (nothing was started)",
                         hint=f"Store {'it' if len(missing) == 1 else 'them'} first: {commands}; then run again.")
    return tuple(resolved)


def resolve_secrets(secrets: Mapping[str, str]) -> dict[str, str]:
    """moat.yaml's ``secrets:`` (name → reference), each resolved on the host."""
    if not secrets:
        return {}
    from moat.credentials.secrets import resolve_secret

    return {name: resolve_secret(reference, name=name) for name, reference in secrets.items()}


def proxy_ca_for(home: Path, *, create: bool = True) -> Path:
    """moat's public CA certificate, which the run mounts for its agent: made on first use, unless
    ``create`` is false (a dry run writes nothing, and only says where it will be)."""
    if not create:
        from moat.proxy.ca import PUBLIC_CERT
        from moat.proxy.paths import ProxyPaths

        return ProxyPaths(home).ca_dir / PUBLIC_CERT
    from moat.proxy.ca import ensure_ca

    return ensure_ca(home).cert_file


DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


def docker_socket(env: Mapping[str, str]) -> tuple[str, int] | None:
    """docker:host's socket: the engine moat uses (DOCKER_HOST when it names a Unix socket, else the
    default one) and the group that owns it; None when there is no socket to hand over."""
    import stat as stat_module

    value = env.get("DOCKER_HOST", "").strip()
    if value and not value.startswith("unix://"):
        raise UsageError(f"docker:host hands the agent the engine's Unix socket, and DOCKER_HOST names {value[:80]!r}",
                         hint="Point DOCKER_HOST at a unix:// socket, or leave docker:host out.")
    path = value.removeprefix("unix://") or DEFAULT_DOCKER_SOCKET
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return (path, info.st_gid) if stat_module.S_ISSOCK(info.st_mode) else None
