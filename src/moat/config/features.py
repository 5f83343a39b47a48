"""Which parts of a valid moat.yaml ask for something this moat does not do yet.

Such files load (so users can bring them unchanged and learn exactly what is missing), but a run
stops before starting anything. Above all, a security setting is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moat.config.load import Config
from moat.config.schema import SECRET_SCHEMES, MoatConfig, is_secret_reference
from moat.errors import UnsupportedFeatureError

Where = tuple[str, ...]


@dataclass(frozen=True)
class Feature:
    path: Where
    used: Callable[[MoatConfig], bool]
    why: str  # what the user loses if we went ahead

    def found(self, model: MoatConfig) -> list[Where]:
        return [self.path] if self.used(model) else []


@dataclass(frozen=True)
class ValuesFeature:
    """A feature used by values rather than keys: each place it is used is reported on its own."""

    places: Callable[[MoatConfig], list[Where]]
    why: str

    def found(self, model: MoatConfig) -> list[Where]:
        return self.places(model)


def _service_secret_references(model: MoatConfig) -> list[Where]:
    return [("services", name, "env", key) for name, override in model.services.items()
            for key, value in override.env.items() if is_secret_reference(value)]


_SCHEMES = ", ".join(f"{s}://" for s in SECRET_SCHEMES)


_FEATURES: tuple[Feature | ValuesFeature, ...] = (
    # The Go tool would resolve nothing here either, but a reference must never become a literal
    # password: refused until secrets are resolved.
    ValuesFeature(_service_secret_references,
                  f"secret references ({_SCHEMES}) in a service's env are not resolved yet (moat.yaml's"
                  " secrets: are); the reference itself would become the value"),
    Feature(("network", "keep_policy"), lambda c: c.network.keep_policy is not None,
            "keep policies are not enforced yet"),
    Feature(("mcp",), lambda c: bool(c.mcp), "MCP servers are not built yet"),
    Feature(("tracing",), lambda c: "tracing" in c.model_fields_set and not c.tracing.disable_exec,
            "exec tracing is not built yet (set tracing.disable_exec: true to run without it)"),
    Feature(("devices",), lambda c: bool(c.devices), "serial devices are not built yet"),
    Feature(("clipboard",), lambda c: c.clipboard is True, "clipboard sharing is not built yet"),
    Feature(("runtime",), lambda c: c.runtime == "apple", "the Apple containers runtime is not built yet"),
    # The agents' blocks are read by `moat claude` & co.; what they cannot do yet is refused by key.
    Feature(("claude", "bedrock"), lambda c: c.claude.bedrock is not None and c.claude.bedrock.enabled,
            "Amazon Bedrock as Claude's backend is not built yet"),
    Feature(("codex", "shared_sessions"), lambda c: c.codex.shared_sessions,
            "sharing the host's Codex sessions is not built yet"),
    Feature(("pi", "packages"), lambda c: bool(c.pi.packages), "pi packages are not installed yet"),
    Feature(("kiro",), lambda c: bool(c.kiro.model_fields_set), "the kiro agent is not built yet"),
)


def unsupported(config: Config) -> list[tuple[Where, str]]:
    """Every feature the config uses that moat cannot honour yet, as (path, why)."""
    return [(path, f.why) for f in _FEATURES for path in f.found(config.model)]


def require_supported(config: Config) -> None:
    """Stop before anything starts if the config needs a feature moat does not have."""
    found = unsupported(config)
    if not found:
        return
    lines = [f"  {'.'.join(path)} ({config.where(*path)}): {why}" for path, why in found]
    raise UnsupportedFeatureError(
        "not supported yet: " + ", ".join(".".join(p) for p, _ in found) + "\n" + "\n".join(lines),
        hint="Remove these keys (or the run will not start); nothing was started.",
    )
