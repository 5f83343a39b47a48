"""The dependency catalog: packaged data (``catalog.yaml``) with typed access."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ruamel.yaml import YAML

from moat.catalog.model import (
    CatalogData,
    Credential,
    Custom,
    DepType,
    Download,
    Dynamic,
    Entry,
    GithubBinary,
    GoTool,
    Installed,
    Meta,
    NpmTool,
    Probe,
    Provisions,
    Runtime,
    Service,
    Tool,
    UvTool,
)

__all__ = [
    "Catalog",
    "Credential",
    "Custom",
    "DepType",
    "Download",
    "Dynamic",
    "Entry",
    "GithubBinary",
    "GoTool",
    "Installed",
    "Meta",
    "NpmTool",
    "Probe",
    "Provisions",
    "Runtime",
    "Service",
    "Tool",
    "UvTool",
    "load_catalog",
]


@dataclass(frozen=True)
class Catalog:
    data: CatalogData

    @property
    def default_base_image(self) -> str:
        return self.data.default_base_image

    def get(self, name: str) -> Entry | None:
        data = self.data
        return (data.runtimes.get(name) or data.tools.get(name) or data.npm_tools.get(name)
                or data.github_binaries.get(name) or data.downloads.get(name) or data.custom.get(name)
                or data.uv_tools.get(name)
                or data.go_tools.get(name)
                or data.services.get(name) or data.meta.get(name))

    def service(self, name: str) -> Service | None:
        return self.data.services.get(name)

    def dynamic(self, prefix: str) -> Dynamic | None:
        return self.data.dynamic.get(prefix)

    def names(self) -> list[str]:
        data = self.data
        return sorted([*data.runtimes, *data.tools, *data.npm_tools, *data.github_binaries, *data.downloads,
                       *data.custom, *data.uv_tools, *data.go_tools, *data.services, *data.meta])

    def entries(self) -> Iterator[tuple[str, Entry]]:
        """Every named entry, sorted by name."""
        for name in self.names():
            entry = self.get(name)
            assert entry is not None
            yield name, entry

    def service_names(self) -> list[str]:
        return sorted(self.data.services)

    def alias_for(self, name: str) -> str | None:
        return self.data.aliases.get(name.lower())

    def is_not_yet_provided(self, name: str) -> bool:
        return name in self.data.not_yet_provided or name in self.data.not_yet_dynamic


def _read_yaml(text: str) -> object:
    return YAML(typ="safe", pure=True).load(text)


@cache
def load_catalog() -> Catalog:
    """The packaged catalog, validated once per process."""
    text = resources.files("moat.catalog").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return Catalog(CatalogData.model_validate(_read_yaml(text)))
