"""The dependency catalog: packaged data (``catalog.yaml``) with typed access."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

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


CATALOG_YAML = "catalog.yaml"  # the catalog as it is written (and commented)
# The same data compiled to JSON (`make catalog`): read at every start in a fraction of a millisecond,
# where parsing the YAML takes ~55 ms. A test keeps the two equal.
CATALOG_JSON = "catalog.json"


def _read_yaml(text: str) -> object:
    from ruamel.yaml import YAML  # noqa: PLC0415 — only where the YAML itself is read

    return YAML(typ="safe", pure=True).load(text)


SOURCE_KEY = "compiled_from_sha256"  # in catalog.json: the YAML it was compiled from


def _digest(yaml_text: str) -> str:
    return hashlib.sha256(yaml_text.encode()).hexdigest()


def compile_catalog(yaml_text: str) -> str:
    """catalog.json's text for ``yaml_text`` (the YAML's digest in it): only a catalog that
    validates, and only if JSON holds it unchanged (a key YAML reads as a number would not be)."""
    data = _read_yaml(yaml_text)
    CatalogData.model_validate(data)
    # In the YAML's order: some mappings are read in it (a credential's default may name one before it).
    text = json.dumps(data, indent=1)
    if json.loads(text) != data:
        raise ValueError("catalog.yaml holds values JSON cannot keep as they are (a key that is not a string?)")
    assert isinstance(data, dict)
    return json.dumps({**data, SOURCE_KEY: _digest(yaml_text)}, indent=1) + "\n"


@cache
def load_catalog() -> Catalog:
    """The packaged catalog, validated once per process: its compiled JSON when it was compiled
    from this very YAML (its digest says so), else the YAML itself (edited, `make catalog` not run)."""
    files = resources.files("moat.catalog")
    text = files.joinpath(CATALOG_YAML).read_text(encoding="utf-8")
    compiled = files.joinpath(CATALOG_JSON)
    if compiled.is_file():
        try:
            data = json.loads(compiled.read_bytes())
        except ValueError:  # a merge left it unreadable: the YAML is the catalog
            data = None
        if isinstance(data, dict) and data.pop(SOURCE_KEY, None) == _digest(text):
            return Catalog(CatalogData.model_validate(data))
    return Catalog(CatalogData.model_validate(_read_yaml(text)))
