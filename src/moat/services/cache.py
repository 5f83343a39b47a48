"""The host cache that provisioned items (e.g. ollama models) live in, shared by every run.

    MOAT_HOME/cache/<service>/            mounted at the catalog's cache path in the sidecar (0700)
    MOAT_HOME/cache/.moat/locks/<service>/ one lock file per item, plus "in-use"
    MOAT_HOME/cache/.moat/index/<service>.json  when each item was pulled and last used

Locking does not serialise strangers: a lock per item, so runs pulling different models proceed in
parallel, and a run that finds another pulling the same model waits and then finds it cached.
Runs hold a shared "in-use" lock on a service's cache while their sidecar has it mounted;
``moat cache clean`` needs it exclusively, so it never deletes files from under a running service.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from moat.files import now_iso, private_dir, write_private

LOCK_POLL = 0.1  # seconds between lock attempts, so waiting honours Ctrl-C and timeouts


class LockAborted(Exception):
    """The run stopped while waiting for a lock."""


class LockTimeout(Exception):
    """The deadline passed while another run held the lock."""


class CacheBusy(Exception):
    """A running run has this cache mounted."""


def _slug(item: str) -> str:
    """A file name for an item: readable, and unique even where the readable part collides."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", item)[:80]
    return f"{readable}-{hashlib.sha256(item.encode()).hexdigest()[:10]}"


class HostCache:
    def __init__(self, home: Path) -> None:
        self.root = home / "cache"
        self._meta = self.root / ".moat"

    def service_dir(self, service: str) -> Path:
        private_dir(self.root)
        return private_dir(self.root / service)

    def services(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _locks(self, service: str) -> Path:
        return private_dir(self._meta / "locks" / service)

    # --- per-item locks ------------------------------------------------------------------------------

    @contextmanager
    def item_lock(self, service: str, item: str, deadline: float, abort: threading.Event,
                  on_wait: Callable[[], None]) -> Iterator[None]:
        lock = FileLock(self._locks(service) / f"{_slug(item)}.lock", thread_local=False)
        waited = False
        while True:
            try:
                lock.acquire(timeout=LOCK_POLL)
                break
            except Timeout:
                if not waited:
                    waited = True
                    on_wait()
                if abort.is_set():
                    raise LockAborted from None
                if time.monotonic() >= deadline:
                    raise LockTimeout from None
        try:
            yield
        finally:
            lock.release()

    def item_locked(self, service: str, item: str) -> bool:
        """Whether some run is pulling ``item`` right now."""
        lock = FileLock(self._locks(service) / f"{_slug(item)}.lock", thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    # --- whole-cache use ------------------------------------------------------------------------------

    @contextmanager
    def in_use(self, service: str) -> Iterator[None]:
        """Held (shared) by a run for as long as its sidecar has the cache mounted."""
        with self._flock(service, fcntl.LOCK_SH):
            yield

    @contextmanager
    def exclusive(self, service: str) -> Iterator[None]:
        """For cleaning: fails at once with CacheBusy while any run uses the cache."""
        try:
            with self._flock(service, fcntl.LOCK_EX | fcntl.LOCK_NB):
                yield
        except BlockingIOError:
            raise CacheBusy(service) from None

    @contextmanager
    def _flock(self, service: str, mode: int) -> Iterator[None]:
        fd = os.open(self._locks(service) / "in-use", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # --- the index: when items were pulled and last used -------------------------------------------

    def _index_path(self, service: str) -> Path:
        return private_dir(self._meta / "index") / f"{service}.json"

    def read_index(self, service: str) -> dict[str, dict[str, Any]]:
        path = self._index_path(service)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record_use(self, service: str, item: str, *, pulled: bool, image: str) -> None:
        path = self._index_path(service)
        with FileLock(path.with_suffix(".lock"), thread_local=False):
            index = self.read_index(service)
            entry = index.setdefault(item, {})
            stamp = now_iso()
            entry["last_used"] = stamp
            entry["image"] = image
            if pulled or "pulled_at" not in entry:
                entry["pulled_at"] = stamp
            write_private(path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    def forget(self, service: str, items: list[str] | None) -> None:
        """Drop index entries (all of them when ``items`` is None)."""
        path = self._index_path(service)
        with FileLock(path.with_suffix(".lock"), thread_local=False):
            index = {} if items is None else {k: v for k, v in self.read_index(service).items() if k not in items}
            write_private(path, json.dumps(index, indent=2, sort_keys=True) + "\n")
