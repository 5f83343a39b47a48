"""The host cache that provisioned items (e.g. ollama models) live in, shared by every run.

    MOAT_HOME/cache/<service>/             mounted at the catalog's cache path in the sidecar (0700)
    MOAT_HOME/cache/.moat/locks/<service>/ "pull" (one writer at a time) and "in-use" (0600)
    MOAT_HOME/cache/.moat/index/<service>.json  when each item was pulled and last used

One run at a time pulls into a service's cache: two models can share blobs, and two servers writing
the same blob at once corrupt it. A run that finds another pulling waits, then finds its item
cached if the other pulled it. Runs hold a shared "in-use" lock on a service's cache while their
sidecar has it mounted; ``moat cache clean`` takes it exclusively, so it never deletes files from
under a running service.

No lock is ever waited for while another is held, and every wait polls: a wait honours the run's
abort and its deadline, and can never block another process's start.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moat.files import now_iso, private_dir, write_private

LOCK_POLL = 0.05  # seconds between lock attempts, so waiting honours aborts and deadlines
INDEX_LOCK_TIMEOUT = 10.0  # seconds: the index lock is held for milliseconds


class LockAborted(Exception):
    """The run stopped while waiting for a lock."""


class LockTimeout(Exception):
    """The deadline passed while another run held the lock."""


class CacheBusy(Exception):
    """A running run has this cache mounted (or is pulling into it)."""


class HostCache:
    def __init__(self, home: Path) -> None:
        self.root = home / "cache"
        self._meta = self.root / ".moat"

    def service_dir(self, service: str) -> Path:
        return private_dir(self.root / service)

    def services(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _lock_file(self, service: str, name: str) -> Path:
        return private_dir(self._meta / "locks" / service) / name

    # --- pulling: one writer per service cache -----------------------------------------------------

    @contextmanager
    def pulling(self, service: str, deadline: float, abort: threading.Event,
                on_wait: Callable[[], None]) -> Iterator[None]:
        """Held while a run pulls into the cache; waits (polling) while another run does."""
        with _flock(self._lock_file(service, "pull"), fcntl.LOCK_EX, deadline, abort, on_wait):
            yield

    def being_pulled(self, service: str) -> bool:
        """Whether some run is pulling into this cache right now."""
        try:
            with _flock(self._lock_file(service, "pull"), fcntl.LOCK_EX, 0.0, None, None):
                return False
        except LockTimeout:
            return True

    # --- whole-cache use ---------------------------------------------------------------------------

    @contextmanager
    def in_use(self, service: str, deadline: float, abort: threading.Event | None = None) -> Iterator[None]:
        """Held (shared) by a run for as long as its sidecar has the cache mounted.

        Only ``moat cache clean`` holds it exclusively, for as long as its deletions take.
        """
        with _flock(self._lock_file(service, "in-use"), fcntl.LOCK_SH, deadline, abort, None):
            yield

    @contextmanager
    def exclusive(self, service: str) -> Iterator[None]:
        """For cleaning: fails at once with CacheBusy while any run uses the cache."""
        try:
            with _flock(self._lock_file(service, "in-use"), fcntl.LOCK_EX, 0.0, None, None):
                yield
        except LockTimeout:
            raise CacheBusy(service) from None

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
        with _flock(path.with_suffix(".lock"), fcntl.LOCK_EX, time.monotonic() + INDEX_LOCK_TIMEOUT, None, None):
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
        with _flock(path.with_suffix(".lock"), fcntl.LOCK_EX, time.monotonic() + INDEX_LOCK_TIMEOUT, None, None):
            index = {} if items is None else {k: v for k, v in self.read_index(service).items() if k not in items}
            write_private(path, json.dumps(index, indent=2, sort_keys=True) + "\n")


@contextmanager
def _flock(path: Path, mode: int, deadline: float, abort: threading.Event | None,
           on_wait: Callable[[], None] | None) -> Iterator[None]:
    """``flock`` the file (created 0600), polling until ``deadline``; released when the block ends.

    ``deadline`` is a ``time.monotonic()`` value; 0 means a single attempt.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if abort is not None and abort.is_set():
                raise LockAborted
            if time.monotonic() >= deadline:
                raise LockTimeout
            if abort is not None:
                abort.wait(LOCK_POLL)
            else:
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # closing releases the lock
