"""The shape of ``moat.yaml``: every key the Go moat accepts, at every depth, and nothing else.

Models forbid unknown keys everywhere (the Go tool silently drops them). Keys for features this moat
has not built yet are still described here so such files load; ``config.features`` decides whether
a run may proceed. Values that several shapes may take (a mount as ``src:dst`` or as a mapping) are
normalised to one shape before validation, so errors point at the user's key, not at a union arm.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

from moat.config.yamldoc import scalar_text
from moat.credentials.hosts import valid_pattern
from moat.policy.rules import parse_rule

# As the Go tool takes them: an env key is any string (yaml.v3 into map[string]string) and a name any
# string. What no environment or terminal can hold safely is refused: an empty key, '=' in a key
# (KEY=VALUE would split elsewhere), and control characters. Container-safe names derive from `name`.
ENV_NAME_RE = r"^[^=\x00-\x1f\x7f-\x9f]+$"
IMAGE_REF_RE = r"^[a-zA-Z0-9][a-zA-Z0-9._\-/:]*(@sha256:[a-f0-9]{64})?$"
RUN_NAME_RE = r"^[^\x00-\x1f\x7f-\x9f]+$"

# Realistic ranges, so a number that passes here does not overflow when a run starts.
MAX_CPUS = 1024
MIN_CPUS = 0.01  # Docker's smallest CPU limit; below it the limit would silently be none
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB
MAX_INT64 = 2**63 - 1  # what the Go tool (and the kernel, for ulimits) can hold

# The schemes of the Go tool's secret resolvers (internal/secrets: op, ssm, env). A value
# "scheme://..." with one of these is a secret reference, not a literal.
SECRET_SCHEMES = ("op", "ssm", "env")


# What each string pattern means, for messages ("expected an absolute path, got 'data'").
PATTERN_RULES: dict[str, str] = {}


def matching(pattern: str, rule: str) -> StringConstraints:
    """A string constraint whose rule is explained in words when a value breaks it."""
    PATTERN_RULES[pattern] = rule
    return StringConstraints(pattern=pattern)


def _to_text(value: Any) -> Any:
    """Any scalar reads as its written text, as the Go tool reads it; null reads as ''."""
    if value is None:
        return ""
    text = scalar_text(value)
    return value if text is None else text


def _single_line(value: str) -> str:
    """Env values end up in server config files and command lines: one line, no control characters.
    The message never shows the value (it may be a password)."""
    for char in value:
        if unicodedata.category(char) == "Cc":
            raise ValueError(f"contains a control character (U+{ord(char):04X}); values must be a single line")
    return value


def is_secret_reference(value: str) -> bool:
    """``op://vault/item/field``, ``ssm://...``, ``env://VAR``: resolved by the Go tool, not literal."""
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme in SECRET_SCHEMES


def _reference(value: str) -> str:
    # The Go tool's own rule for secrets: a value without "scheme://" is refused at load.
    scheme, sep, _ = value.partition("://")
    if not sep or not scheme:
        raise ValueError("expected a secret reference such as 'op://vault/item/field' (scheme://path)")
    return value


Text = Annotated[str, BeforeValidator(_to_text)]


def _not_bool(value: Any) -> Any:
    """``true`` is no port (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a port number (1-65535), got {'true' if value else 'false'}")
    return value


Port = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=65535)]
EnvName = Annotated[str, matching(ENV_NAME_RE, "a variable name (not empty, without '=' or control characters)")]
EnvValue = Annotated[str, BeforeValidator(_to_text), AfterValidator(_single_line)]
ImageRef = Annotated[str, BeforeValidator(_to_text), matching(
    IMAGE_REF_RE, "an image reference such as 'postgres:17' or 'registry.example.com/team/pg:16'")]
AbsolutePath = Annotated[str, matching(r"^/", "an absolute path (starting with /)")]
LowerName = Annotated[str, matching(r"^[a-z0-9][a-z0-9_-]*$", "a name of lowercase letters, digits, '-' and '_'")]
EnvMap = dict[EnvName, EnvValue]
SecretMap = dict[EnvName, Annotated[EnvValue, AfterValidator(_reference)]]
Int64 = Annotated[int, Field(le=MAX_INT64)]


class Section(BaseModel):
    """A mapping in moat.yaml: unknown keys are errors, and ``key: null`` means "use the default"."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Only a known key's null is its default: an unknown one (`dependncies:` with nothing after
        # it) must still reach `extra="forbid"` and be reported.
        if isinstance(data, dict):
            known = {*cls.model_fields, *(f.alias for f in cls.model_fields.values() if f.alias)}
            return {k: v for k, v in data.items() if v is not None or k not in known}
        return data


# --- container ---------------------------------------------------------------------------------

UlimitName = Literal[
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
    "rss", "rtprio", "rttime", "sigpending", "stack",
]


class Ulimit(Section):
    soft: int = Field(ge=-1, le=MAX_INT64)
    hard: int = Field(ge=-1, le=MAX_INT64)

    @model_validator(mode="after")
    def _ordered(self) -> Ulimit:
        if self.soft == -1 and self.hard != -1:
            raise ValueError("soft is -1 (unlimited), so hard must be -1 too")
        if -1 not in (self.soft, self.hard) and self.soft > self.hard:
            raise ValueError(f"soft ({self.soft}) must not exceed hard ({self.hard})")
        return self


def _memory_floor(value: int) -> int:
    if 0 < value < 128:
        raise ValueError(f"must be 0 (no limit) or at least 128 MB, got {value}")
    return value


def _cpus_floor(value: float) -> float:
    if 0 < value < MIN_CPUS:
        raise ValueError(f"must be 0 (no limit) or at least {MIN_CPUS}, got {value:g}")
    return value


class ContainerConfig(Section):
    # MB; 0 = the engine's default (no limit)
    memory: Annotated[int, Field(ge=0, le=MAX_MEMORY_MB), AfterValidator(_memory_floor)] = 0
    # 0 = no limit
    cpus: Annotated[float, Field(ge=0, le=MAX_CPUS, allow_inf_nan=False), AfterValidator(_cpus_floor)] = 0
    dns: list[Text] = Field(default_factory=list)
    ulimits: dict[UlimitName, Ulimit] = Field(default_factory=dict)


# --- services ----------------------------------------------------------------------------------


class ServiceOverride(Section):
    """``services.<name>``. The service's provisions key (e.g. ollama ``models``) arrives as an extra
    field and is checked against the catalog by ``config.checks``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    env: EnvMap = Field(default_factory=dict)
    image: ImageRef | None = None
    wait: bool = True
    memory: int | None = Field(None, gt=0, le=MAX_MEMORY_MB)  # MB
    ready_timeout: float = Field(60, gt=0, le=3600, allow_inf_nan=False)  # seconds
    # memory: the service's data directories are tmpfs (fast; the data counts toward ``memory``);
    # disk: an anonymous volume, as the image declares (for data larger than memory allows).
    storage: Literal["memory", "disk"] = "memory"
    provision_timeout: float = Field(1800, gt=0, le=86400, allow_inf_nan=False)  # seconds, per item
    # Start from a cached initialised data directory (where the catalog knows how), not afresh.
    warm: bool = True


# --- network -----------------------------------------------------------------------------------

def _rule_entry(value: Any) -> Any:
    """``- api.github.com`` or ``- api.github.com: ["allow GET /repos/**"]`` → one shape."""
    if isinstance(value, str):
        return {"host": value, "rules": []}
    if isinstance(value, dict) and len(value) == 1:
        ((host, rules),) = value.items()
        return {"host": host, "rules": rules if rules is not None else []}
    if isinstance(value, dict):
        raise ValueError("a rule entry maps exactly one host to its rules, e.g. 'api.github.com: [...]'")
    return value


def _check_rule(value: str) -> str:
    parse_rule(value)  # RuleError is a ValueError: a located config error with its reason
    return value


def _check_host(value: str) -> str:
    problem = valid_pattern(value)
    if problem:
        raise ValueError(problem)
    return value


class HostRules(Section):
    host: Annotated[str, StringConstraints(min_length=1), AfterValidator(_check_host)]
    rules: list[Annotated[str, BeforeValidator(_to_text), AfterValidator(_check_rule)]] = Field(
        default_factory=list
    )


class InlinePolicy(Section):
    deny: list[Text] = Field(default_factory=list)
    mode: Literal["", "enforce", "audit"] = ""


def _policy_kind(value: Any) -> str:
    return "inline" if isinstance(value, dict | InlinePolicy) else "name"


# A keep policy is a pack name or file path (a string), or an inline mapping.
Policy = Annotated[
    Annotated[InlinePolicy, Tag("inline")] | Annotated[Text, Tag("name")],
    Discriminator(_policy_kind),
]


class NetworkConfig(Section):
    policy: Literal["permissive", "strict"] = "permissive"
    allow: list[Text] = Field(default_factory=list)  # removed in the Go moat; non-empty is an error
    rules: list[Annotated[HostRules, BeforeValidator(_rule_entry)]] = Field(default_factory=list)
    keep_policy: Policy | None = None
    host: list[Port] = Field(default_factory=list)

    @model_validator(mode="after")
    def _checks(self) -> NetworkConfig:
        if self.allow:
            raise ValueError("network.allow is no longer supported; use network.rules instead")
        if len(set(self.host)) != len(self.host):
            raise ValueError("network.host lists a port twice")
        return self


# --- files -------------------------------------------------------------------------------------


def mount_entry(value: Any) -> Any:
    """``./data:/data:ro`` → ``{source: ./data, target: /data, mode: ro}``."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"mount {value!r} must read SOURCE:TARGET or SOURCE:TARGET:ro|rw")
    return {"source": parts[0], "target": parts[1], **({"mode": parts[2]} if len(parts) == 3 else {})}


# An excluded path is the path of an empty in-memory directory laid over the mount; the Go tool's
# characters (it interpolates them into a root-run tar), no '..' (it would leave the mount).
_EXCLUDE_CHARS = re.compile(r"[A-Za-z0-9/._*-]+")
# Where a mount would replace what every container needs (or hide the whole system).
SYSTEM_TARGETS = ("/", "/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/lib", "/usr", "/tmp")  # noqa: S108 — a target refused


def _exclude_path(value: str) -> str:
    if not value:
        raise ValueError("an excluded path must not be empty")
    bad = _EXCLUDE_CHARS.sub("", value)
    if bad:
        raise ValueError(f"unsupported character {bad[0]!r} in {value!r} (allowed: letters, digits, / . - _ *)")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} must not contain '..': an excluded path stays inside its mount")
    if value.startswith("/"):
        raise ValueError(f"{value!r} must be relative to the mount's target (e.g. node_modules)")
    cleaned = posixpath.normpath(value)
    if cleaned == ".":
        raise ValueError(f"{value!r} is the mount itself; to hide all of it, remove the mount")
    return cleaned


def _mount_target(value: str) -> str:
    cleaned = posixpath.normpath(value)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} must not contain '..'")
    if cleaned == "/" or any(cleaned == s for s in SYSTEM_TARGETS) or cleaned.startswith(("/proc/", "/sys/",
                                                                                           "/dev/")):
        raise ValueError(f"{cleaned!r} is a system directory every container needs; mount somewhere else"
                         " (e.g. /data)")
    return cleaned


MountTarget = Annotated[AbsolutePath, AfterValidator(_mount_target)]


class Mount(Section):
    source: Annotated[Text, StringConstraints(min_length=1)]
    target: MountTarget
    mode: Literal["", "ro", "rw"] = ""
    exclude: list[Annotated[Text, AfterValidator(_exclude_path)]] = Field(default_factory=list)

    @property
    def read_only(self) -> bool:
        return self.mode == "ro"


class Volume(Section):
    name: LowerName
    target: MountTarget
    readonly: bool = False
    type: Literal["", "bind", "volume"] = ""


class WorkspaceConfig(Section):
    mode: Literal["", "bind", "volume"] = ""


class HooksConfig(Section):
    post_build: Text = ""
    post_build_root: Text = ""
    pre_run: Text = ""


class Device(Section):
    class Match(Section):
        usb: Annotated[str, matching(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$", "a USB id such as '0403:6001'")] | None = None
        interface: Annotated[Text, matching(r"^[0-9]+$", "an interface number")] | None = None

    name: LowerName
    match: Match = Field(default_factory=Match)
    baud: int = Field(0, ge=0, le=MAX_INT64)
    record: Literal["", "events", "full"] = ""


# --- observability -----------------------------------------------------------------------------


class SnapshotTriggers(Section):
    disable_pre_run: bool = False
    disable_git_commits: bool = False
    disable_builds: bool = False
    disable_idle: bool = False
    idle_threshold_seconds: int = Field(30, ge=0, le=MAX_INT64)


class SnapshotExclude(Section):
    ignore_gitignore: bool = False
    additional: list[Text] = Field(default_factory=list)


class SnapshotRetention(Section):
    max_count: int = Field(10, ge=0, le=MAX_INT64)
    delete_initial: bool = False


class SnapshotsConfig(Section):
    disabled: bool = False
    triggers: SnapshotTriggers = Field(default_factory=SnapshotTriggers)
    exclude: SnapshotExclude = Field(default_factory=SnapshotExclude)
    retention: SnapshotRetention = Field(default_factory=SnapshotRetention)


class TracingConfig(Section):
    disable_exec: bool = False


# --- MCP and agents ----------------------------------------------------------------------------


class McpAuth(Section):
    grant: Annotated[str, StringConstraints(min_length=1)]
    header: Annotated[str, StringConstraints(min_length=1)]


def _mcp_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class McpServer(Section):
    name: Annotated[str, StringConstraints(min_length=1)]
    url: Annotated[str, matching(r"^(https://|http://(localhost|127\.0\.0\.1|\[::1\]))",
                                 "an https:// URL (or http:// to localhost)")] | None = None
    auth: McpAuth | None = None
    policy: Policy | None = None


class LocalMcpServer(Section):
    command: Annotated[str, StringConstraints(min_length=1)]
    args: list[Text] = Field(default_factory=list)
    env: EnvMap = Field(default_factory=dict)
    grant: Text = ""
    cwd: Text = ""


# Names and locations that reach a shell line and a path in the image: the Go tool's rules.
MARKETPLACE_NAME = r"^[A-Za-z0-9_-]+$"
PLUGIN_KEY = r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_-]+$"
GITHUB_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
GIT_URL = re.compile(r"^(https?://|ssh://|git@)[A-Za-z0-9._@:/~+-]+$")


class Marketplace(Section):
    source: Literal["github", "git", "directory"]
    repo: Text = ""
    url: Text = ""
    path: Text = ""
    ref: Annotated[Text, matching(r"^$|^[A-Za-z0-9._][A-Za-z0-9._/-]*$", "a branch or tag name")] = ""  # github, git

    @model_validator(mode="after")
    def _location(self) -> Marketplace:
        if self.source == "github" and not GITHUB_REPO.fullmatch(self.repo):
            raise ValueError("a github marketplace needs repo: OWNER/REPO")
        if self.source == "git" and not GIT_URL.fullmatch(self.url):
            raise ValueError("a git marketplace needs url: an https://, ssh:// or git@ URL"
                             " (letters, digits and . _ @ : / ~ + -)")
        if self.source == "git" and self.url.startswith(("http://", "https://")):
            authority = self.url.split("://", 1)[1].split("/", 1)[0]
            if "@" in authority:  # it would be written into the image and the run's record
                raise ValueError("a git marketplace's url must not carry a user or token; moat clones it with"
                                 " your git, and its credential helper")
            host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
            if self.url.startswith("http://") and host not in ("localhost", "127.0.0.1", "[::1]"):
                raise ValueError("a git marketplace's url must be https:// (plain http:// only on this machine)")
        if self.source == "directory":
            parts = self.path.replace("\\", "/").split("/")
            if not self.path or self.path.startswith(("/", "~")) or ".." in parts:
                # Its files are copied into the image the agent reads: nothing from outside the workspace.
                raise ValueError("a directory marketplace needs path: a directory inside the workspace, relative to"
                                 " it (no /, ~ or ..)")
        return self


class LlmGateway(Section):
    policy: Policy | None = None


class BedrockModels(Section):
    haiku: Text = ""
    sonnet: Text = ""
    opus: Text = ""
    custom: Text = ""


class Bedrock(Section):
    enabled: bool = False
    region: Text = ""
    models: BedrockModels = Field(default_factory=BedrockModels)


class ClaudeConfig(Section):
    base_url: Annotated[Text, matching(r"^https?://[^/\s]+", "an http:// or https:// URL with a host")] | None = None
    sync_logs: bool | None = None
    plugins: dict[Annotated[str, matching(PLUGIN_KEY, "PLUGIN@MARKETPLACE (letters, digits and _ - .)")], bool] = \
        Field(default_factory=dict)
    marketplaces: dict[Annotated[str, matching(MARKETPLACE_NAME, "letters, digits, _ and -")], Marketplace] = \
        Field(default_factory=dict)
    mcp: dict[str, LocalMcpServer] = Field(default_factory=dict)
    subscription_type: Text = ""
    rate_limit_tier: Text = ""
    llm_gateway: LlmGateway | None = Field(None, alias="llm-gateway")
    env: EnvMap = Field(default_factory=dict)
    bedrock: Bedrock | None = None


class LogSyncingAgent(Section):
    sync_logs: bool | None = None
    mcp: dict[str, LocalMcpServer] = Field(default_factory=dict)


class CodexConfig(LogSyncingAgent):
    shared_sessions: bool = False  # mount the host's ~/.codex/sessions


class CopilotConfig(Section):
    model: Text = ""
    # The values the Go tool documents for `copilot --context` and `--reasoning-effort`.
    context: Literal["", "default", "long_context"] = ""
    reasoning_effort: Literal["", "none", "minimal", "low", "medium", "high", "xhigh", "max"] = ""
    experimental: bool = False
    autopilot: bool = False


class PiConfig(Section):
    provider: Text = ""
    model: Text = ""
    packages: list[
        Annotated[str, matching(r"^(npm:|git:|https://|ssh://)[A-Za-z0-9@:/._~%+#-]+$",
                                "a package source starting npm:, git:, https:// or ssh://")]
    ] = Field(default_factory=list)


# --- the file ----------------------------------------------------------------------------------


def _empty_block(value: Any) -> Any:
    """``postgres:`` with nothing under it means the defaults, as in the Go tool."""
    return {} if value is None else value



class MoatConfig(Section):
    name: Annotated[Text, matching(RUN_NAME_RE, "a name (not empty, without control characters)")] | None = None
    agent: Text = ""
    version: Text = ""
    dependencies: list[Any] = Field(default_factory=list)  # parsed against the catalog
    services: dict[str, Annotated[ServiceOverride, BeforeValidator(_empty_block)]] = Field(default_factory=dict)
    env: EnvMap = Field(default_factory=dict)
    secrets: SecretMap = Field(default_factory=dict)
    grants: list[Text] = Field(default_factory=list)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    command: list[Text] | None = None
    interactive: bool = False
    clipboard: bool | None = None
    runtime: Literal["", "docker", "apple", "sandbox", "kubernetes"] = ""
    container: ContainerConfig = Field(default_factory=ContainerConfig)
    base_image: ImageRef | None = None
    mounts: list[Annotated[Mount, BeforeValidator(mount_entry)]] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    ports: dict[Annotated[str, StringConstraints(min_length=1)], Port] = Field(default_factory=dict)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    workspace: WorkspaceConfig = Field(default_factory=WorkspaceConfig)
    sandbox: Literal["", "none"] = ""
    mcp: list[Annotated[McpServer, BeforeValidator(_mcp_entry)]] = Field(default_factory=list)
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    language_servers: list[Literal["go", "typescript", "python"]] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    claude: ClaudeConfig = Field(default_factory=ClaudeConfig)
    codex: CodexConfig = Field(default_factory=CodexConfig)
    gemini: LogSyncingAgent = Field(default_factory=LogSyncingAgent)
    kiro: LogSyncingAgent = Field(default_factory=LogSyncingAgent)
    copilot: CopilotConfig = Field(default_factory=CopilotConfig)
    pi: PiConfig = Field(default_factory=PiConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> MoatConfig:
        overlap = sorted(set(self.env) & set(self.secrets))
        if overlap:
            raise ValueError(f"{', '.join(overlap)} set in both env and secrets; keep one")
        if self.command is not None and (not self.command or not self.command[0]):
            raise ValueError("command must name a program, e.g. [\"npm\", \"start\"]")
        return self


# Phrases for "expected ..., got ..." errors, by dotted path pattern ('*' matches one segment).
EXPECTED: dict[str, str] = {
    "services.*.memory": "an integer number of megabytes",
    "container.memory": "an integer number of megabytes (0 for no limit)",
    "container.cpus": "a number of CPUs",
    "services.*.ready_timeout": "a number of seconds",
    "services.*.provision_timeout": "a number of seconds",
    "services.*.wait": "true or false",
    "command": "a list of strings such as [\"npm\", \"start\"]",
    "ports.*": "a port number (1-65535)",
    "network.host": "a port number (1-65535)",
}

# The allowed range of each bounded number, in words, for "must be at most ..." errors.
RANGES: dict[str, str] = {
    "container.cpus": f"0 (no limit), or {MIN_CPUS} to {MAX_CPUS} CPUs",
    "container.memory": f"0 (no limit), or 128 to {MAX_MEMORY_MB} megabytes (16 TiB)",
    "services.*.memory": f"1 to {MAX_MEMORY_MB} megabytes (16 TiB)",
    "services.*.ready_timeout": "more than 0 and at most 3600 seconds (one hour)",
    "services.*.provision_timeout": "more than 0 and at most 86400 seconds (one day)",
    "container.ulimits.*.soft": f"-1 (unlimited), or 0 to {MAX_INT64}",
    "container.ulimits.*.hard": f"-1 (unlimited), or 0 to {MAX_INT64}",
    "ports.*": "1 to 65535",
    "network.host": "1 to 65535",
}
