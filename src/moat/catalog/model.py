"""Typed view of ``catalog.yaml``: runtimes, apt tools and services.

The catalog is data. Adding a service means adding an entry to ``catalog.yaml`` (plus a test); nothing
here names a particular service.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Versions reach shell commands and image tags: only this alphabet is ever accepted.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Provision items (e.g. model names) are passed to a command inside a container: one argument each,
# and only this alphabet, so none can be read as an option or reach a shell.
PROVISION_ITEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")


class DepType(StrEnum):
    RUNTIME = "runtime"
    TOOL = "tool"
    NPM = "npm"  # a catalog tool installed with npm (the Go tool's type "npm")
    RELEASE = "github-binary"  # a binary from a GitHub release, its checksum verified
    DOWNLOAD = "download"  # a binary from its vendor's download site, its checksum verified
    CUSTOM = "custom"  # installed by its own commands (rustup, playwright's browsers)
    UV = "uv-tool"  # a Python tool installed with uv (the Go tool's type "uv-tool")
    GO = "go-install"  # a Go program built with go install (checked against Go's checksum database)
    SERVICE = "service"
    DYNAMIC = "dynamic"
    DOCKER = "docker"  # docker:host — the Docker CLI, talking to the engine the run runs on


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Versioned(_Frozen):
    """Shared version rules: an optional allow-list and a default."""

    description: str
    versions: tuple[str, ...] = ()  # empty: any well-formed version is accepted
    default: str | None = None

    @model_validator(mode="after")
    def _default_is_allowed(self) -> Versioned:
        if self.versions and self.default is not None and self.default not in self.versions:
            raise ValueError(f"default {self.default!r} is not among versions {self.versions}")
        return self


class Runtime(Versioned):
    type: Literal["runtime"] = "runtime"
    binary: str  # the program that must be on PATH for the sandbox runtime
    package: str  # the Debian package that provides it there
    # Image used as the base when this is the only runtime declared; ``{version}`` is substituted.
    base_image: str
    # Dockerfile lines that install the runtime onto another base (when several runtimes are
    # declared). ``{version}`` is substituted.
    install: tuple[str, ...]
    # Apt packages the install lines need on a Debian base.
    install_apt: tuple[str, ...] = ()


class Tool(Versioned):
    type: Literal["tool"] = "tool"
    apt: str  # the Debian package that provides the tool
    apt_with: tuple[str, ...] = ()  # other packages it is used with (protoc's well-known types)
    binary: str | None = None  # the program it provides, when not named like the tool
    # Debian names some programs otherwise (batcat, fdfind): the name users type is linked to it.
    link: str | None = None  # the program Debian installs, linked as ``binary``


class NpmTool(Versioned):
    """A tool published on the npm registry, installed globally into the agent image."""

    type: Literal["npm"] = "npm"
    package: str  # the npm package, e.g. @openai/codex
    binary: str  # the program it provides (for messages and the sandbox)
    requires: tuple[str, ...] = ("node",)  # runtimes or tools it needs declared beside it
    # A tool whose Go counterpart needs nothing declared (claude-code: a native installer there)
    # brings what it requires, at the default version, when moat.yaml does not name it.
    brings_requirements: bool = False


class GithubBinary(Versioned):
    """A program from a project's GitHub releases (the Go tool's type "github-binary").

    Templates take ``{version}`` and ``{target}`` (or ``{arch}``: the same), the target being the
    project's name for the image's architecture. The download is verified before it is installed:
    against ``sha256`` pinned here for (version, architecture) when there is one, else against the
    checksum file the project publishes with the release (``checksums``); with neither, moat refuses it.
    """

    type: Literal["github-binary"] = "github-binary"
    repo: str  # owner/name
    asset: str  # the release asset's file name
    bin: str | None = None  # the program's path inside the archive (default: the command's name)
    command: str | None = None  # the name it is installed as (default: the entry's name)
    tag_prefix: str = "v"  # the release tag is tag_prefix + version
    targets: dict[Literal["amd64", "arm64"], str]
    checksums: str | None = None  # the checksum file's asset name (a template); None: pinned only
    sha256: dict[str, dict[Literal["amd64", "arm64"], str]] = Field(default_factory=dict)  # version → arch → hex
    requires: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)  # image environment it needs (uv's tool directories)

    @model_validator(mode="after")
    def _verifiable(self) -> GithubBinary:
        if self.checksums is None and (self.default is None or self.default not in self.sha256):
            raise ValueError("a release binary needs a checksums file or a pinned sha256 for its default version")
        for version, hashes in self.sha256.items():
            for arch, digest in hashes.items():
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError(f"sha256 for {version}/{arch} is not 64 hex digits")
        return self


class Download(Versioned):
    """A program from its vendor's download site (kubectl, helm, terraform: the Go tool's "custom"),
    verified as a release binary is: against the vendor's checksum file, or a pinned sha256.
    ``url`` and ``checksums_url`` take ``{version}`` and ``{target}``; ``{url}`` in the latter is the
    download's own URL (``….sha256`` files)."""

    type: Literal["download"] = "download"
    url: str
    checksums_url: str
    bin: str | None = None  # the program's path inside the archive (default: the command; a bare file: itself)
    command: str | None = None
    targets: dict[Literal["amd64", "arm64"], str]
    requires: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)


class Custom(Versioned):
    """A dependency with an installer of its own (the Go tool's "custom"): shell commands run as root
    in one image layer; ``{version}`` is substituted, ``{fetch}`` is moat's verifying downloader."""

    type: Literal["custom"] = "custom"
    install: tuple[str, ...]
    binary: str  # the program it provides
    verification: str  # how what it downloads is checked, in words (moat deps info says it)
    apt: tuple[str, ...] = ()  # Debian packages it needs (a linker for rust), added to the apt layer
    requires: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)  # the image's environment it needs (PATH, homes)


class UvTool(Versioned):
    """A Python program installed with ``uv tool install`` (each in its own environment)."""

    type: Literal["uv-tool"] = "uv-tool"
    package: str  # the PyPI package
    binary: str  # the program it provides
    requires: tuple[str, ...] = ("uv",)


class GoTool(Versioned):
    """A Go program built with ``go install`` (downloads checked against Go's checksum database)."""

    type: Literal["go-install"] = "go-install"
    package: str  # the module path of the command, e.g. golang.org/x/tools/gopls
    binary: str  # the program it provides
    requires: tuple[str, ...] = ("go",)


class Meta(_Frozen):
    """A bundle: naming it names each of its members (which take their default versions)."""

    type: Literal["meta"] = "meta"
    description: str
    members: tuple[str, ...]


class EnvAppend(_Frozen):
    words: str
    unless_set: tuple[str, ...] = ()  # the user chose for themselves: they set one of these variables
    unless_contains: tuple[str, ...] = ()  # ...or the variable they set holds one of these options


class Credential(_Frozen):
    """One connection detail (user, password, db) of a service.

    ``env`` is the container variable that sets it (and that a user may override in
    ``services.<n>.env``); ``default`` may refer to other credentials as ``{user}``.
    """

    env: str | None = None
    default: str | None = None
    generate: bool = False  # a fresh random secret per run

    @model_validator(mode="after")
    def _has_a_value(self) -> Credential:
        if not self.generate and self.default is None:
            raise ValueError("a credential needs a default or generate: true")
        return self


class Probe(_Frozen):
    """A readiness check run inside the service container; argv templates, never a shell string."""

    command: tuple[str, ...]
    env: dict[str, str] = Field(default_factory=dict)
    expect: str | None = None  # substring the output must contain, when the exit code is not enough


class Provisions(_Frozen):
    """Items a service fetches after it is ready (e.g. ollama models), cached on the host."""

    key: str  # the services.<n> key that lists the items, e.g. ``models``
    command: tuple[str, ...]  # argv template; ``{item}`` is one item, passed as one argument
    # Prints what is already present, one item per line in the first column (after a header).
    list_command: tuple[str, ...]
    list_header: str | None = None  # the first word of a header line to skip
    default_tag: str | None = None  # an item without ":tag" means this tag ("latest")
    # Finds "<done>/<total>" byte counts in the command's progress output.
    progress_pattern: str | None = None
    cache_path: str  # where the host cache is mounted inside the container
    layout: Literal["ollama"]  # how items are stored in the cache (for `moat cache`)
    noun: str = "item"


class HostRecipe(_Frozen):
    """How the sandbox runtime runs a service from host binaries (see runtime/sandbox/services.py)."""

    recipe: Literal["postgres", "mariadb", "redis", "ollama"]
    binaries: tuple[str, ...]  # programs it needs, looked up on PATH (and in the package's own dirs)
    package: str  # the Debian package to install when they are missing ("" when Debian has none)


class WarmRecipe(_Frozen):
    """How a service starts warm (see services/warm.py): its data directories, once initialised with
    throwaway credentials, are copied into each run's memory; the run's own credentials are set over
    the service's local socket before it counts as ready."""

    recipe: Literal["postgres", "mysql"]  # how the run's credentials are set (services/warm.py)


class Service(Versioned):
    type: Literal["service"] = "service"
    image: str  # repository; the tag is the version
    port: int
    env_prefix: str  # MOAT_<PREFIX>_HOST …
    credentials: dict[str, Credential] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)  # extra container environment
    # Words added to a variable (postgres's initdb arguments): what keeps the service closed to a
    # wrong password, unless the user chose otherwise for themselves.
    env_append: dict[str, EnvAppend] = Field(default_factory=dict)
    command: tuple[str, ...] | None = None  # container command; None keeps the image's own
    url: str
    inject: tuple[str, ...]  # which MOAT_<PREFIX>_* variables the agent gets
    readiness: Probe
    provisions: Provisions | None = None
    sandbox: HostRecipe | None = None  # None: the sandbox runtime cannot run this service
    # Where the service keeps its data. A sidecar's data is thrown away with it, so by default these
    # are in memory (tmpfs): no disk I/O while it initialises (postgres starts in half the time).
    data_paths: tuple[str, ...] = ()
    min_memory_mb: int = 64
    # What its data adds to that when it is kept in memory (storage: memory counts toward the limit).
    data_memory_mb: int = 0
    warm: WarmRecipe | None = None  # None: every run initialises the service afresh

    @model_validator(mode="after")
    def _inject_known(self) -> Service:
        known = {"HOST", "PORT", "URL", *(name.upper() for name in self.credentials)}
        unknown = sorted(set(self.inject) - known)
        if unknown:
            raise ValueError(f"inject lists unknown variables {unknown}")
        return self


class Dynamic(_Frozen):
    """A package-manager prefix such as ``pip:`` or ``npm:``."""

    type: Literal["dynamic"] = "dynamic"
    description: str
    requires: str  # the runtime that provides the package manager
    install: str  # Dockerfile RUN command; ``{packages}`` becomes the quoted package specs
    version_separator: str  # how NAME and VERSION are joined for the package manager
    name_pattern: str
    each: bool = False  # one install command per package (go install builds one module at one version)
    default_version: str | None = None  # what a package without a version gets (go install's "latest")


Entry = Runtime | Tool | NpmTool | GithubBinary | Download | Custom | UvTool | GoTool | Service | Meta
# Kinds installed by a tool that another dependency provides (node's npm, uv, go), or downloaded.
Installed = NpmTool | GithubBinary | Download | Custom | UvTool | GoTool


class DockerCli(_Frozen):
    """``docker:host``: Docker's CLI from Docker's apt repository (Debian's is too old for today's
    engines), its packages checked by apt against Docker's signing key."""

    description: str
    apt_base: str  # Docker's repository: <apt_base>/<distribution>, its key at <apt_base>/<distribution>/gpg
    packages: tuple[str, ...]
    socket_target: str = "/var/run/docker.sock"  # where the agent finds the engine's socket


class CatalogData(_Frozen):
    default_base_image: str
    runtimes: dict[str, Runtime]
    tools: dict[str, Tool]
    services: dict[str, Service]
    npm_tools: dict[str, NpmTool] = Field(default_factory=dict)
    github_binaries: dict[str, GithubBinary] = Field(default_factory=dict)
    downloads: dict[str, Download] = Field(default_factory=dict)
    custom: dict[str, Custom] = Field(default_factory=dict)
    uv_tools: dict[str, UvTool] = Field(default_factory=dict)
    go_tools: dict[str, GoTool] = Field(default_factory=dict)
    meta: dict[str, Meta] = Field(default_factory=dict)
    dynamic: dict[str, Dynamic]
    docker: DockerCli | None = None
    aliases: dict[str, str] = Field(default_factory=dict)  # common wrong name → right name
    not_yet_provided: frozenset[str] = frozenset()  # names the Go moat knows and we lack
    not_yet_dynamic: frozenset[str] = frozenset()  # package-manager prefixes likewise

    @model_validator(mode="after")
    def _names_unique(self) -> CatalogData:
        seen: dict[str, str] = {}
        for kind, entries in (("runtimes", self.runtimes), ("tools", self.tools), ("npm_tools", self.npm_tools),
                              ("github_binaries", self.github_binaries), ("downloads", self.downloads),
                              ("custom", self.custom),
                              ("uv_tools", self.uv_tools),
                              ("go_tools", self.go_tools), ("services", self.services), ("meta", self.meta)):
            for name in entries:
                if name in seen:
                    raise ValueError(f"{name!r} appears in both {seen[name]} and {kind}")
                seen[name] = kind
        for name, bundle in self.meta.items():
            outside = [m for m in bundle.members if seen.get(m) in (None, "services", "meta")]
            if outside:
                raise ValueError(f"meta {name!r} lists {outside}, which are not tools or runtimes of the catalog")
        installed: list[tuple[str, Installed]] = [*self.npm_tools.items(), *self.github_binaries.items(),
                                                  *self.downloads.items(), *self.custom.items(),
                                                  *self.uv_tools.items(),
                                                  *self.go_tools.items()]
        for name, tool in installed:
            if any(r not in seen for r in tool.requires):
                raise ValueError(f"{name!r} requires {tool.requires}, not all in the catalog")
        for wrong, right in self.aliases.items():
            if right not in seen:
                raise ValueError(f"alias {wrong!r} points to unknown {right!r}")
        return self
