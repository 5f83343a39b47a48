"""What ``moat run`` reads from the host before planning: the run's grants, from the credential store,
and moat.yaml's secrets, from their resolvers. Everything is checked before anything starts: a
missing grant or an unresolvable secret stops the run with what to do, and nothing to clean up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from moat.config.load import Config
from moat.errors import ConfigError, Located, UsageError
from moat.plan.proxy import ResolvedGrant

if TYPE_CHECKING:
    from moat.policy.keep import RuleSet

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
    if not path.startswith("/"):
        raise UsageError(f"docker:host needs the engine's socket by its absolute path; DOCKER_HOST names {path!r}",
                         hint="Set DOCKER_HOST=unix:///absolute/path/docker.sock.")
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return (path, info.st_gid) if stat_module.S_ISSOCK(info.st_mode) else None


def read_llm_policy(config: Config, workspace: Path) -> RuleSet | None:
    """claude.llm-gateway's policy as Keep rules, checked (their expressions compiled) before
    anything starts: moat.yaml's inline ``deny:`` list, or a rule file (relative to the workspace)."""
    gateway = config.model.claude.llm_gateway
    if gateway is None or gateway.policy is None:
        return None
    from moat.config.schema import InlinePolicy
    from moat.policy.keep import SCOPE_LLM, KeepError, inline_rules, parse_rules

    where = ("claude", "llm-gateway", "policy")

    def problem(message: str) -> ConfigError:
        return ConfigError(config.file, [Located(where, f"claude.llm-gateway.policy: {message}",
                                                 *config.marks.locate(where))])

    policy = gateway.policy
    try:
        if isinstance(policy, InlinePolicy):
            if not policy.deny:
                raise problem("an inline policy needs at least one operation under deny:")
            rules = inline_rules(list(policy.deny), policy.mode, SCOPE_LLM)
        elif "/" in policy or policy.endswith((".yaml", ".yml")):
            rules = parse_rules(_rule_file(workspace / policy, problem), SCOPE_LLM)
        else:
            raise problem(f"{policy!r} names one of Keep's policy packs, which moat does not provide yet;"
                          " give a rule file (a path ending in .yaml) or an inline deny: list")
        compiled(rules)
    except KeepError as exc:
        raise problem(str(exc)) from None
    return rules


def _rule_file(path: Path, problem: Callable[[str], ConfigError]) -> object:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(f"cannot read the rule file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise problem(f"{path} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None


def compiled(rules: RuleSet) -> None:
    """Every rule's expression compiled, as the proxy will: a mistake is said now, not mid-run."""
    try:
        from moat.policy.keep import Evaluator
    except ImportError:  # pragma: no cover — cel-python is a dependency of moat
        raise UsageError("claude.llm-gateway needs cel-python", hint="pip install cel-python") from None
    Evaluator(rules)
