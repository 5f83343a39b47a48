"""Every provider moat knows: its built-ins (packaged YAML beside this module) and the user's own
(MOAT_HOME/providers/*.yaml), looked up by name, alias or grant (``name:scope1,scope2``)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moat.config.yamldoc import YamlProblem, load_document
from moat.credentials.providers.model import Provider
from moat.credentials.providers.schema import MAX_FILE, parse_provider
from moat.errors import ConfigError, Located, UsageError
from moat.suggest import did_you_mean

USER_DIR = "providers"  # under MOAT_HOME
SUFFIX = ".yaml"  # the Go tool reads only these; a .yml file is pointed out, not read
# Providers whose behaviour the Go tool keeps in code: a user's file of the same name does not
# replace them (as in the Go tool), the Go tool's YAML built-ins it does.
CORE = frozenset({"github", "anthropic", "claude", "openai", "gemini", "npm"})


@dataclass(frozen=True)
class GrantSpec:
    """A grant as written in moat.yaml or on the command line: ``github`` or ``github:repo,gist``."""

    provider: str
    scopes: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.provider}:{','.join(self.scopes)}" if self.scopes else self.provider


def parse_grant(text: str) -> GrantSpec:
    name, _, scopes = text.strip().partition(":")
    return GrantSpec(name.strip().lower(), tuple(dict.fromkeys(s.strip() for s in scopes.split(",") if s.strip())))


class ProviderRegistry:
    def __init__(self, providers: Iterable[Provider], *, notes: Iterable[str] = (), home: Path | None = None) -> None:
        self._by_name = {p.name: p for p in providers}
        self._aliases = {alias: p.name for p in self._by_name.values() for alias in p.aliases
                         if alias not in self._by_name}
        self.notes = tuple(notes)  # what the user should know about their files (shown by the CLI)
        self.home = home

    @classmethod
    def load(cls, home: Path | None) -> ProviderRegistry:
        """The built-ins, then each ``home/providers/*.yaml``: a bad file is a ConfigError at its line."""
        providers = {p.name: p for p in builtin_providers()}
        notes: list[str] = []
        directory = home / USER_DIR if home else None
        if directory is not None and directory.is_dir():
            custom: dict[str, Provider] = {}
            for path in sorted(directory.iterdir()):
                if path.suffix == ".yml" and path.is_file():
                    notes.append(f"{path} is not read: provider files end in {SUFFIX}")
                if path.suffix != SUFFIX or not path.is_file():
                    continue
                provider = _read_user_file(path)
                if provider.name in custom:
                    raise ConfigError(path, [_located(path, ("name",), f"provider '{provider.name}' is also defined in"
                                                                       f" {custom[provider.name].file}")])
                if provider.name in CORE:
                    notes.append(f"{path} is not used: '{provider.name}' is a built-in provider that a file cannot"
                                 " replace; give yours another name")
                    continue
                custom[provider.name] = provider
            providers.update(custom)
            _check_aliases(providers)
        return cls(providers.values(), notes=notes, home=home)

    def find(self, name: str) -> Provider | None:
        """By name first, then by alias; ``name:scopes`` is looked up by its name."""
        key = parse_grant(name).provider
        provider = self._by_name.get(key)
        if provider is None and key in self._aliases:
            provider = self._by_name[self._aliases[key]]
        return provider

    def get(self, name: str) -> Provider:
        provider = self.find(name)
        if provider is None:
            key = parse_grant(name).provider
            where = f", or describe your own in {self.home / USER_DIR}/{key or 'NAME'}{SUFFIX}" if self.home else ""
            raise UsageError(f"unknown provider '{key[:64]}'{did_you_mean(key, [*self._by_name, *self._aliases])}",
                             hint=f"Run `moat grant providers` to list them{where}.")
        return provider

    def providers(self) -> list[Provider]:
        return sorted(self._by_name.values(), key=lambda p: p.name)

    def names(self) -> list[str]:
        return sorted(self._by_name)


@functools.cache
def builtin_providers() -> tuple[Provider, ...]:
    """moat's own providers, from the YAML files packaged beside this module (parsed once)."""
    found = []
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(SUFFIX):
            found.append(parse_provider(entry.read_text(encoding="utf-8"), file=Path(entry.name), origin="builtin"))
    return tuple(found)


def _read_user_file(path: Path) -> Provider:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(path, [Located((), f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE:
        raise ConfigError(path, [Located((), f"larger than {MAX_FILE // 1024} KiB; a provider file is a few lines")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [Located((), f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_provider(text, file=path, origin="custom")


def _check_aliases(providers: dict[str, Provider]) -> None:
    """An alias names one provider: a user's file may not take another provider's name or alias."""
    owner: dict[str, Provider] = {}
    for provider in sorted(providers.values(), key=lambda p: (p.origin != "builtin", p.name)):
        for alias in provider.aliases:
            other = providers.get(alias) or owner.get(alias)
            if other is not None and other is not provider:
                if provider.origin == "custom":
                    where: tuple[str | int, ...] = ("aliases", provider.aliases.index(alias))
                    raise ConfigError(provider.file, [_located(provider.file, where, f"alias '{alias}' already names"
                                                                                     f" provider '{other.name}'")])
                raise ConfigError(other.file, [_located(other.file, ("name",), f"'{alias}' is already an alias of"
                                                                               f" provider '{provider.name}'")])
            owner[alias] = provider


def _located(file: Path | None, path: tuple[str | int, ...], message: str) -> Located:
    """A problem found after parsing, at its line in the file (read again: it is a few lines)."""
    line = column = None
    if file is not None:
        try:
            _, marks = load_document(file.read_text(encoding="utf-8"))
            line, column = marks.locate(path, prefer_key=not isinstance(path[-1], int))
        except (OSError, UnicodeDecodeError, YamlProblem):
            pass
    return Located(path, message, line, column)
