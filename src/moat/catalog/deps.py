"""The ``name[@version]`` grammar and dependency-list resolution.

Everything here is pure: strings in, ``Dependency`` values or ``DependencyError`` out. Versions and
package names end up in Dockerfile lines, image tags and shell commands, so they are checked
against strict alphabets before anything else looks at them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from moat.catalog import Catalog
from moat.catalog.model import (
    VERSION_RE,
    Custom,
    DepType,
    Download,
    GithubBinary,
    GoTool,
    Installed,
    Meta,
    NpmTool,
    Runtime,
    Service,
    Tool,
    UvTool,
)
from moat.errors import EXIT_USAGE, MoatError
from moat.suggest import closest

# How each kind installed by another dependency is named in a resolved dependency.
INSTALLED_KINDS: dict[type, DepType] = {NpmTool: DepType.NPM, GithubBinary: DepType.RELEASE,
                                        Download: DepType.DOWNLOAD, Custom: DepType.CUSTOM, UvTool: DepType.UV,
                                        GoTool: DepType.GO}

DOCKER_HOST = "docker:host"
_PREFIX_RE = re.compile(r"^([a-z]+):(.*)$", re.DOTALL)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RULE = "versions may only contain letters, digits, '.', '-' and '_'"
# Past this many problems in one list, suggestions stop: nobody reads them, and each costs time.
_SUGGEST_AT_MOST = 50


class DependencyError(MoatError):
    """A dependency string is malformed, unknown, or conflicts with another."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Dependency:
    """One resolved dependency."""

    name: str  # catalog name, or the package name for pip:/npm:
    type: DepType
    version: str | None  # the version to install; the catalog default when none was given
    requested: str | None  # the version the user wrote, if any
    manager: str | None = None  # "pip" / "npm" for package-manager dependencies

    @property
    def key(self) -> str:
        """Identity for duplicate detection: a package and a catalog entry never collide."""
        return f"{self.manager}:{self.name}" if self.manager else self.name

    @property
    def spec(self) -> str:
        """Canonical ``name@version`` text (what the image tag hashes over)."""
        return f"{self.key}@{self.version}" if self.version else self.key


def parse_dependency(text: object, catalog: Catalog, *, suggest: bool = True) -> Dependency:
    """Parse one entry of ``dependencies`` (``suggest``: add a did-you-mean to an unknown name)."""
    if not isinstance(text, str):
        raise DependencyError(f"expected a string such as 'postgres@17', got {_describe(text)}")
    raw = text.strip()
    if not raw:
        raise DependencyError("empty dependency: write a name such as 'postgres' or 'python@3.12'")
    match = _PREFIX_RE.match(raw)
    if match and match.group(1) == "docker":
        return _parse_docker(match.group(2), raw, catalog)
    if match:
        return _parse_dynamic(match.group(1), match.group(2), raw, catalog)
    if raw == "docker":
        raise DependencyError(DOCKER_MODES)
    name, sep, version = raw.partition("@")
    return _parse_named(name, version if sep else None, raw, catalog, suggest)


def _parse_named(name: str, version: str | None, raw: str, catalog: Catalog, suggest: bool) -> Dependency:
    if not _NAME_RE.fullmatch(name):
        raise DependencyError(
            f"invalid dependency {raw!r}: a name may only contain letters, digits, '.', '-' and '_'"
            + _suggestion(name, catalog, suggest)
        )
    entry = catalog.get(name)
    if entry is None:
        raise DependencyError(unknown_message(name, catalog, suggest=suggest))
    if version is not None:
        _check_version_text(name, version)
    if isinstance(entry, Meta):  # resolve_dependencies expands bundles; a single dependency is not one
        raise DependencyError(f"{name} is a bundle of {', '.join(entry.members)}: name it in dependencies")
    if isinstance(entry, Tool):
        if version is not None:
            raise DependencyError(
                f"{name} is installed from Debian's package {entry.apt!r} and takes no version;"
                f" write '{name}'"
            )
        return Dependency(name, DepType.TOOL, None, None)
    if version is not None and entry.versions and version not in entry.versions:
        default = f"; omit the version for the default, {entry.default}" if entry.default else ""
        raise DependencyError(
            f"invalid version {version!r} for {name} — available: {', '.join(entry.versions)}{default}"
        )
    if isinstance(entry, GithubBinary) and entry.checksums is None and (version or entry.default) not in entry.sha256:
        pinned = ", ".join(sorted(entry.sha256))
        raise DependencyError(f"{name} publishes no checksums, and moat has its sha256 for {pinned} only: it will not"
                              f" install {name}@{version} unverified; omit the version")
    if isinstance(entry, Installed):
        return Dependency(name, INSTALLED_KINDS[type(entry)], version or entry.default, version)
    kind = DepType.RUNTIME if isinstance(entry, Runtime) else DepType.SERVICE
    assert isinstance(entry, Runtime | Service)
    return Dependency(name, kind, version or entry.default, version)


DOCKER_MODES = ("docker needs a mode: 'docker:host' (the Docker engine moat runs on, through its socket: full"
                " access to it) or 'docker:dind' (a daemon of the run's own, not provided yet)")


def _parse_docker(mode: str, raw: str, catalog: Catalog) -> Dependency:
    if mode == "dind":
        raise DependencyError(f"{raw!r}: a Docker daemon of the run's own (the Go moat's docker:dind, with its BuildKit"
                              " sidecar) is not provided yet; docker:host hands the agent the engine moat runs on")
    if mode != "host" or catalog.data.docker is None:
        raise DependencyError(f"{raw!r}: {DOCKER_MODES}")
    return Dependency(DOCKER_HOST, DepType.DOCKER, None, None)


def _parse_dynamic(prefix: str, rest: str, raw: str, catalog: Catalog) -> Dependency:
    manager = catalog.dynamic(prefix)
    if manager is None:
        if catalog.is_not_yet_provided(prefix):
            raise DependencyError(
                f"{raw!r}: the '{prefix}:' dependencies of the Go moat are not supported yet;"
                f" supported prefixes: {', '.join(f'{p}:' for p in sorted(catalog.data.dynamic))}"
            )
        raise DependencyError(
            f"unknown dependency prefix '{prefix}:' in {raw!r}; supported prefixes:"
            f" {', '.join(f'{p}:' for p in sorted(catalog.data.dynamic))}"
        )
    # A scoped npm package starts with '@', so the version separator is the last '@' after it.
    at = rest.rfind("@")
    if at > 0:
        package, version = rest[:at], rest[at + 1 :]
    else:
        package, version = rest, None
    if not package or not re.fullmatch(manager.name_pattern, package):
        raise DependencyError(f"invalid {prefix} package name {package!r} in {raw!r}")
    if version is not None:
        _check_version_text(f"{prefix}:{package}", version)
    return Dependency(package, DepType.DYNAMIC, version, version, manager=prefix)


def _check_version_text(name: str, version: str) -> None:
    if not version:
        raise DependencyError(f"empty version for {name}: write '{name}@VERSION' or omit '@'")
    if not VERSION_RE.fullmatch(version):
        raise DependencyError(f"invalid version {version!r} for {name}: {_VERSION_RULE}")


def unknown_message(name: str, catalog: Catalog, *, suggest: bool = True) -> str:
    """Why ``name`` is not a dependency: one the Go moat has that this one lacks, or no such name."""
    if catalog.is_not_yet_provided(name):
        return (
            f"'{name}' is a dependency of the Go moat that this moat does not provide yet;"
            " use a base_image that has it, or a pip:/npm: package"
        )
    return f"unknown dependency '{name}'{_suggestion(name, catalog, suggest)} (`moat deps list` shows them all)"


def _suggestion(name: str, catalog: Catalog, suggest: bool) -> str:
    if not suggest:
        return ""
    match = catalog.alias_for(name) or closest(name, catalog.names())
    return f" — did you mean '{match}'?" if match else ""


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


def resolve_dependencies(items: list[object], catalog: Catalog,
                         implied: tuple[str, ...] = ()) -> tuple[list[Dependency], dict[int, str]]:
    """Parse every entry; return the deduplicated dependencies and the problems by list index.

    Every entry is checked (not just up to the first bad one) so the user sees all problems at once.
    ``implied``: what the command adds (an agent's CLI and what it needs), after the user's entries,
    each only where the user named none of its name (their version wins); requirements are checked
    with them in.
    """
    problems: dict[int, str] = {}
    seen: dict[str, tuple[int, Dependency]] = {}
    bundled: set[str] = set()  # keys a bundle brought in, not the user by name
    resolved: list[Dependency] = []
    for index, item in enumerate(items):
        try:
            parsed = _expanded(item, catalog, suggest=len(problems) < _SUGGEST_AT_MOST)
        except DependencyError as exc:
            problems[index] = exc.message
            continue
        for dep, from_bundle in parsed:
            earlier = seen.get(dep.key)
            if earlier is None:
                seen[dep.key] = (index, dep)
                resolved.append(dep)
                if from_bundle:
                    bundled.add(dep.key)
            elif earlier[1].version == dep.version or from_bundle:
                continue  # the same; or a bundle's member named already, as the user wrote it
            elif dep.key in bundled:
                # A bundle's member (at its default) named on its own with a version: the version wins.
                resolved[resolved.index(earlier[1])] = dep
                seen[dep.key] = (index, dep)
                bundled.discard(dep.key)
            else:
                problems[index] = (
                    f"{dep.key} is declared twice with different versions"
                    f" ({earlier[1].spec} at dependencies[{earlier[0]}], {dep.spec} here); keep one"
                )
    for spec in implied:
        dep = parse_dependency(spec, catalog)
        if dep.key not in seen:
            seen[dep.key] = (len(items), dep)
            resolved.append(dep)
    for index, dep in ((seen[d.key][0], d) for d in resolved):
        entry = catalog.get(dep.name) if dep.type in INSTALLED_KINDS.values() else None
        if isinstance(entry, Installed):
            missing = [r for r in entry.requires if r not in seen]
            if missing and isinstance(entry, NpmTool) and entry.brings_requirements:
                for requirement in missing:
                    brought = parse_dependency(requirement, catalog)
                    seen[brought.key] = (index, brought)
                    resolved.append(brought)
            elif missing:
                added = " and ".join(f"'{m}'" for m in missing)
                problems[index] = f"{_needs(dep.name, entry, missing)}: add {added} to dependencies"
        if dep.manager:
            needed = catalog.dynamic(dep.manager)
            assert needed is not None
            if needed.requires not in seen:
                problems[index] = (
                    f"{dep.key} is installed with {dep.manager}, which needs"
                    f" {'the ' + needed.requires + ' runtime' if needed.requires != dep.manager else needed.requires}:"
                    f" add '{needed.requires}' to dependencies"
                )
    return resolved, problems


def _needs(name: str, entry: Installed, missing: list[str]) -> str:
    # The installer's own program first (node, uv, go); what else it needs (protoc for its plugins) plainly.
    first, others = missing[0], " and ".join(missing[1:])
    also = f", and {others}" if others else ""
    if isinstance(entry, NpmTool) and first == "node":
        return f"{name} ({entry.package}) is installed with npm, which needs the node runtime{also}"
    if isinstance(entry, UvTool) and first == "uv":
        return f"{name} ({entry.package}) is installed with uv, which needs uv{also}"
    if isinstance(entry, GoTool) and first == "go":
        return f"{name} ({entry.package}) is built with go install, which needs go{also}"
    return f"{name} needs {' and '.join(missing)}"


def _expanded(item: object, catalog: Catalog, *, suggest: bool) -> list[tuple[Dependency, bool]]:
    """One entry of the list: a dependency, or a bundle's members (each flagged as from a bundle)."""
    if isinstance(item, str):
        name, sep, _ = item.strip().partition("@")
        bundle = catalog.get(name)
        if isinstance(bundle, Meta):
            if sep:
                raise DependencyError(f"{name} is a bundle ({', '.join(bundle.members)}) and takes no version;"
                                      f" write '{name}'")
            return [(parse_dependency(member, catalog, suggest=False), True) for member in bundle.members]
    return [(parse_dependency(item, catalog, suggest=suggest), False)]


def quote_packages(deps: list[Dependency], separator: str, default_version: str | None = None) -> list[str]:
    """Package specs for an install command line, each shell-quoted."""
    specs = [f"{d.name}{separator}{d.version or default_version}" if d.version or default_version else d.name
             for d in deps]
    return [shlex.quote(s) for s in specs]
