"""What `moat cache list` and `moat cache clean` do, over the host cache and its layouts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moat.cache.host import CacheBusy, HostCache
from moat.cache.layouts import LAYOUTS, normalize
from moat.catalog import Catalog
from moat.errors import MoatError, UsageError
from moat.suggest import did_you_mean

# Removes root-owned files under a root (a sidecar wrote them) through the container engine.
RootRemover = Callable[[list[Path], Path], None]


class CacheError(MoatError):
    """The cache could not be cleaned (in use, or files that need the engine to remove)."""


@dataclass(frozen=True)
class Entry:
    service: str
    item: str
    size: int
    last_used: str | None
    pulled_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "item": self.item, "size_bytes": self.size,
                "last_used": self.last_used, "pulled_at": self.pulled_at}


def cached_services(cache: HostCache, catalog: Catalog) -> list[str]:
    return [name for name in cache.services()
            if (service := catalog.service(name)) is not None and service.provisions is not None]


def list_entries(cache: HostCache, catalog: Catalog, service: str | None = None) -> list[Entry]:
    entries = []
    for name in [service] if service else cached_services(cache, catalog):
        recipe = _recipe(catalog, name)
        index = cache.read_index(name)
        root = cache.root / name
        for item in LAYOUTS[recipe.layout](root).items():
            used = index.get(item.name, {})
            entries.append(Entry(name, item.name, item.size, used.get("last_used"), used.get("pulled_at")))
    return entries


def _recipe(catalog: Catalog, service: str) -> Any:
    entry = catalog.service(service)
    if entry is None or entry.provisions is None:
        names = [n for n in catalog.service_names() if (s := catalog.service(n)) and s.provisions]
        raise UsageError(f"'{service}' has no cache{did_you_mean(service, names)}; services with one:"
                         f" {', '.join(names)}")
    return entry.provisions


@dataclass(frozen=True)
class Removal:
    service: str
    items: list[str]  # empty: the whole cache
    paths: list[Path]
    size: int


def plan_removal(cache: HostCache, catalog: Catalog, service: str, items: list[str]) -> Removal:
    recipe = _recipe(catalog, service)
    root = cache.root / service
    layout = LAYOUTS[recipe.layout](root)
    present = {i.name: i for i in layout.items()}
    if not items:
        paths = sorted(root.iterdir()) if root.is_dir() else []
        return Removal(service, [], paths, sum(i.size for i in present.values()))
    names = []
    for item in items:
        name = normalize(item, recipe.default_tag)
        if name not in present:
            raise UsageError(f"{service} has no cached {recipe.noun} '{item}'{did_you_mean(name, present)}")
        names.append(name)
    return Removal(service, names, layout.removal(set(names)), sum(present[n].size for n in names))


def remove(cache: HostCache, removal: Removal, remove_as_root: RootRemover) -> None:
    """Delete the planned files, unless a running run has this cache mounted or is pulling into it."""
    try:
        with cache.exclusive(removal.service):
            if cache.being_pulled(removal.service):
                raise CacheError(f"{removal.service}: a running run is pulling into this cache; try again later")
            _delete(removal.paths, cache.root / removal.service, remove_as_root)
    except CacheBusy:
        raise CacheError(
            f"the {removal.service} cache is in use by a running run",
            hint="Wait for it to end (or stop it), then run `moat cache clean` again.",
        ) from None
    cache.forget(removal.service, removal.items or None)


def _delete(paths: list[Path], root: Path, remove_as_root: RootRemover) -> None:
    blocked = []
    for path in paths:
        if not _within(path, root):
            continue  # a link planted in the cache: what it points to is not the cache's to delete
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # which removes links inside, never what they point to
            else:
                path.unlink(missing_ok=True)  # a link itself, not its target
        except PermissionError:
            blocked.append(path)
    if blocked:
        # Files a sidecar wrote as root (e.g. a pull interrupted before moat could hand them back).
        remove_as_root(blocked, root)
    _prune_empty(root / "models" / "manifests")


def _within(path: Path, root: Path) -> bool:
    """Whether ``path`` is inside ``root`` with no link on the way (its own name may be a link).

    Others may write the cache (a sidecar, the sandbox's user): a directory swapped for a link to
    elsewhere must not turn `moat cache clean` — as root — into a remover of other files."""
    relative = os.path.relpath(os.path.abspath(path.parent), os.path.abspath(root))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return False
    # The root may itself sit behind a link (a home directory elsewhere): only what is below it counts.
    return os.path.realpath(path.parent) == os.path.normpath(os.path.join(os.path.realpath(root), relative))


def _prune_empty(top: Path) -> None:
    if not top.is_dir():
        return
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            continue
