"""Binary private files: written whole (a reader never sees half), 0600, synced before they replace."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_private_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; the file is 0600 whatever the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a crash just after must not leave an empty credential behind
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
