"""Private files: what moat writes under MOAT_HOME is readable by its owner only."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def private_dir(path: Path) -> Path:
    """``path`` as a directory; each one created here (the missing parents too) is 0700, whatever
    the umask. A directory that already exists keeps its mode: it is not ours to change."""
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made by someone else meanwhile
        directory.chmod(0o700)
    return path


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a 0600 file (or ``mode``, whatever the umask) atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also leave half-written files behind
        raise


def overwrite_private(path: Path, text: str) -> None:
    """Rewrite an existing file in place, for when there is no room for a new one (a full disk): its
    own blocks are reused. Not atomic: only a fallback for ``write_private``."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    """The bytes of the regular files under ``path`` (links not followed; what cannot be read skipped)."""
    if not path.exists():
        return 0
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
        except OSError:
            continue
    return total
