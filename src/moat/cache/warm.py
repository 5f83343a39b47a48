"""Warm templates: a service's data directories as they are right after its first initialisation,
made once per (image, settings) and copied into each run's memory (see services/warm.py).

    MOAT_HOME/cache/.warm/ (or $MOAT_WARM_CACHE)
        <service>/<settings digest>-<image digest>/   0700
            0.tar, 1.tar …   each data path as the engine exported it (0600)
            meta.json        what it was made from, and its throwaway password (0600); written last
        .locks/<service>-<key>   shared while a run starts from it, exclusive while one is made or
                                 removed

Nothing waits for these locks: a run that finds a template busy starts its service afresh, a run
that finds another making it leaves the making to that one, and ``moat cache clean`` skips (and
names) a template a run is starting from. A new image or new settings give a new key: the older
templates of the same settings are removed when the new one is stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moat.cache.host import LockTimeout, _flock
from moat.files import now_iso, private_dir, write_private

META = "meta.json"
MAX_FAILURES = 2  # a key whose template failed to start this often is not made or used again
SETTINGS_DIGEST = 16  # hex characters of each half of a key
IMAGE_DIGEST = 12


@dataclass(frozen=True)
class Template:
    service: str
    key: str
    path: Path
    password: str  # the template's own, never a run's
    data_paths: tuple[str, ...]
    image_id: str
    created_at: str

    def archive(self, index: int) -> Path:
        return self.path / f"{index}.tar"

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def template_key(settings: str, image_id: str) -> str:
    settings_part = hashlib.sha256(settings.encode()).hexdigest()[:SETTINGS_DIGEST]
    image_part = hashlib.sha256(image_id.encode()).hexdigest()[:IMAGE_DIGEST]
    return f"{settings_part}-{image_part}"


class WarmCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks = root / ".locks"

    def _dir(self, service: str, key: str) -> Path:
        return self.root / service / key

    def _lock(self, service: str, key: str) -> Path:
        return private_dir(self._locks) / f"{service}-{key}"

    # --- a run ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, service: str, key: str) -> Iterator[Template | None]:
        """The template, held (shared) until the block ends; None when there is none, or it is being
        made or removed right now (the run starts its service afresh rather than wait)."""
        with self._hold(service, key, fcntl.LOCK_SH) as held:
            template = self.find(service, key) if held else None
            if template is not None:
                with contextlib.suppress(OSError):
                    os.utime(template.path / META)  # when it was last used, for `moat cache list`
            yield template

    def find(self, service: str, key: str) -> Template | None:
        if self.broken(service, key):
            return None
        return _read(service, key, self._dir(service, key))

    @contextlib.contextmanager
    def making(self, service: str, key: str) -> Iterator[bool]:
        """Exclusive, at once or not at all: False when another run is making (or using) it."""
        with self._hold(service, key, fcntl.LOCK_EX) as held:
            yield held

    @contextlib.contextmanager
    def _hold(self, service: str, key: str, mode: int) -> Iterator[bool]:
        """The lock at once, or not (False); what the block raises goes through untouched."""
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(_flock(self._lock(service, key), mode, 0.0, None, None))
        except LockTimeout:
            yield False
            return
        with stack:
            yield True

    def store(self, service: str, key: str, parts: Iterable[Iterable[bytes]], password: str,
              data_paths: tuple[str, ...], image_id: str, settings: str) -> Template:
        """Write a template (inside ``making``): a reader sees all of it or none of it."""
        final = self._dir(service, key)
        parent = private_dir(final.parent)
        for stale in parent.glob(f".{key}.*.tmp"):  # a making of this key that was killed half-way
            shutil.rmtree(stale, ignore_errors=True)
        staging = parent / f".{key}.{os.getpid()}.tmp"
        staging.mkdir(mode=0o700)
        try:
            for index, chunks in enumerate(parts):
                fd = os.open(staging / f"{index}.tar", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
            meta = {"service": service, "key": key, "password": password, "data_paths": list(data_paths),
                    "image_id": image_id, "settings": json.loads(settings), "created_at": now_iso()}
            write_private(staging / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)  # a broken one (no meta) of the same key
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._drop_superseded(service, key)
        template = _read(service, key, final)
        if template is None:
            raise OSError(f"the template just stored in {final} cannot be read")
        return template

    def drop(self, service: str, key: str) -> None:
        """Remove a template (its ``making`` lock held)."""
        shutil.rmtree(self._dir(service, key), ignore_errors=True)

    # --- templates that fail --------------------------------------------------------------------------

    def _failures_file(self, service: str, key: str) -> Path:
        return self.root / service / f".{key}.failures"

    def failures(self, service: str, key: str) -> int:
        try:
            return int(self._failures_file(service, key).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def broken(self, service: str, key: str) -> bool:
        return self.failures(service, key) >= MAX_FAILURES

    def failed(self, service: str, key: str) -> None:
        """A warm start from this template failed: counted, and the template removed unless a run
        still holds it (that run's own failure, or success, decides then). The next template of the
        key is made afresh; after ``MAX_FAILURES`` none is."""
        private_dir(self.root / service)
        write_private(self._failures_file(service, key), f"{self.failures(service, key) + 1}\n")
        with self.making(service, key) as mine:
            if mine:
                self.drop(service, key)

    def succeeded(self, service: str, key: str) -> None:
        """A warm start worked: an earlier failure was the moment's, not the template's."""
        with contextlib.suppress(OSError):
            self._failures_file(service, key).unlink(missing_ok=True)

    def _drop_superseded(self, service: str, key: str) -> None:
        """The same settings' templates of other images: that image is gone or will be."""
        settings_part = key.split("-", 1)[0]
        for other in self._keys(service):
            if other != key and other.startswith(settings_part + "-"):
                with self.making(service, other) as mine:
                    if mine:
                        self.drop(service, other)

    # --- moat cache list / clean ------------------------------------------------------------------

    def _keys(self, service: str) -> list[str]:
        directory = self.root / service
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))

    def services(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def templates(self, service: str | None = None) -> list[Template]:
        found = []
        for name in [service] if service else self.services():
            for key in self._keys(name):
                template = self.find(name, key)
                if template is not None:
                    found.append(template)
        return found

    def last_used(self, template: Template) -> str:
        try:
            stamp = (template.path / META).stat().st_mtime
        except OSError:
            return "-"
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))

    def remove(self, service: str | None = None) -> tuple[int, list[str]]:
        """Every template (of ``service``): how many bytes went, and which were in use (kept)."""
        removed, busy = 0, []
        for name in [service] if service else self.services():
            directory = self.root / name
            keys = self._keys(name)
            for key in keys:
                with self.making(name, key) as mine:
                    if not mine:
                        busy.append(f"{name} {key}")
                        continue
                    path = self._dir(name, key)
                    removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
                    self.drop(name, key)
            for stale in sorted(directory.glob(".*.tmp")) if directory.is_dir() else ():
                # A making killed half-way (its lock free), never one under way.
                with self.making(name, stale.name[1:].split(".", 1)[0]) as mine:
                    if mine:
                        shutil.rmtree(stale, ignore_errors=True)
            for marker in directory.glob(".*.failures") if directory.is_dir() else ():
                marker.unlink(missing_ok=True)  # cleaned: a key that failed may be tried again
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty
        return removed, busy


def _read(service: str, key: str, path: Path) -> Template | None:
    try:
        meta: dict[str, Any] = json.loads((path / META).read_text())
        data_paths = tuple(str(p) for p in meta["data_paths"])
        if not all((path / f"{i}.tar").is_file() for i in range(len(data_paths))):
            return None
        return Template(service, key, path, str(meta["password"]), data_paths, str(meta["image_id"]),
                        str(meta.get("created_at", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
