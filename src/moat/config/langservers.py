"""moat.yaml's ``language_servers``: each a language server installed in the agent's image (as
dependencies) and, for Claude Code, enabled as the official marketplace's plugin — the Go tool's
registry, as data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OFFICIAL_MARKETPLACE = "claude-plugins-official"
OFFICIAL_MARKETPLACE_REPO = "anthropics/claude-plugins-official"


@dataclass(frozen=True)
class LanguageServer:
    name: str
    description: str
    plugin: str  # Claude Code's plugin id
    dependencies: tuple[str, ...]  # the runtime, then the server itself (catalog specs)


SERVERS = {
    "go": LanguageServer("go", "Go language server (gopls)", f"gopls-lsp@{OFFICIAL_MARKETPLACE}",
                         ("go@1.25", "gopls")),
    "typescript": LanguageServer("typescript", "TypeScript/JavaScript language server",
                                 f"typescript-lsp@{OFFICIAL_MARKETPLACE}",
                                 ("node@22", "npm:typescript", "npm:typescript-language-server")),
    "python": LanguageServer("python", "Python language server (pyright)", f"pyright-lsp@{OFFICIAL_MARKETPLACE}",
                             ("python", "uv", "uv:pyright")),
}


def dependencies(names: Sequence[str]) -> tuple[str, ...]:
    """What the language servers add to the image, each once, after the file's own (whose version wins)."""
    return tuple(dict.fromkeys(d for n in names if n in SERVERS for d in SERVERS[n].dependencies))


def plugins(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(SERVERS[n].plugin for n in names if n in SERVERS))
