"""How provisioned items sit in a service's host cache, read without starting the service.

``ollama``: ``models/manifests/<registry>/<namespace>/<model>/<tag>`` is a JSON manifest whose layers
(and config) name blobs ``models/blobs/sha256-<hex>``; blobs may be shared between models.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REGISTRY = "registry.ollama.ai"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DEFAULT_NAMESPACE = "library"


@dataclass(frozen=True)
class CachedItem:
    name: str
    size: int  # bytes, counting shared blobs in every item that uses them
    manifest: Path
    blobs: tuple[Path, ...]


def normalize(item: str, default_tag: str | None) -> str:
    """The name an item is listed under: default tag added, default registry/namespace dropped."""
    for prefix in (f"{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/", f"{DEFAULT_REGISTRY}/", f"{DEFAULT_NAMESPACE}/"):
        if item.startswith(prefix):
            item = item[len(prefix):]
            break
    last = item.rsplit("/", 1)[-1]
    if default_tag and ":" not in last:
        item = f"{item}:{default_tag}"
    return item


class OllamaLayout:
    def __init__(self, root: Path) -> None:
        self.models = root / "models"

    def items(self) -> list[CachedItem]:
        manifests = self.models / "manifests"
        if not manifests.is_dir():
            return []
        found = []
        for path in sorted(p for p in manifests.rglob("*") if p.is_file()):
            parts = path.relative_to(manifests).parts
            if len(parts) != 4 or parts[-1].startswith("."):
                continue  # not <registry>/<namespace>/<model>/<tag>
            item = self._read(path, parts)
            if item is not None:
                found.append(item)
        return found

    def _read(self, path: Path, parts: tuple[str, ...]) -> CachedItem | None:
        registry, namespace, model, tag = parts
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        layers = [*manifest.get("layers", []), manifest.get("config") or {}]
        digests = [layer["digest"] for layer in layers
                   if isinstance(layer, dict) and isinstance(layer.get("digest"), str)]
        # The cache may be written by others (a sidecar, the sandbox's user): a digest names a blob only
        # in its one true shape, never a path ("x/../target").
        blobs = tuple(self._blob(digest) for digest in digests if _DIGEST.fullmatch(digest))
        size = sum(int(layer.get("size", 0)) for layer in layers if isinstance(layer, dict))
        if registry == DEFAULT_REGISTRY:
            name = f"{model}:{tag}" if namespace == DEFAULT_NAMESPACE else f"{namespace}/{model}:{tag}"
        else:
            name = f"{registry}/{namespace}/{model}:{tag}"
        return CachedItem(name, size, path, blobs)

    def _blob(self, digest: str) -> Path:
        return self.models / "blobs" / digest.replace(":", "-")

    def removal(self, names: set[str]) -> list[Path]:
        """The files to delete to remove these items: their manifests, and blobs no other item uses."""
        items = self.items()
        doomed = [i for i in items if i.name in names]
        kept_blobs = {b for i in items if i.name not in names for b in i.blobs}
        paths = [i.manifest for i in doomed]
        paths += sorted({b for i in doomed for b in i.blobs if b not in kept_blobs and b.exists()})
        return paths


LAYOUTS = {"ollama": OllamaLayout}
