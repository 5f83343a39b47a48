"""The private host directories the plan assigns to a run and its containers.

Created 0700 and owned by the agent's identity, whose processes write there; removed with their
container or network. When moat is root they sit in a directory that identity controls, so nothing
here follows a symbolic link: a planted link could otherwise make root create or delete elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from moat.errors import EngineError
from moat.files import private_dir
from moat.plan.identity import Identity

_DIR = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_parent(path: Path, trusted: Path) -> int:
    """An fd for ``path.parent``, reached from ``trusted`` without following links below it."""
    fd = os.open(trusted, os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.parent.relative_to(trusted).parts:
            child = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def create(path: Path, owner: Identity, trusted: Path | None = None) -> None:
    """``path`` as an empty-or-ours 0700 directory owned by ``owner``; ``trusted``: the ancestor from
    which no link is followed (default: its parent, created moat's own 0700 if missing)."""
    trusted = trusted or private_dir(path.parent)
    parent = _open_parent(path, trusted)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path.name, 0o700, dir_fd=parent)
        try:
            fd = os.open(path.name, _DIR, dir_fd=parent)
        except OSError as exc:
            raise EngineError(f"the sandbox's directory {path} is not a directory of its own ({exc.strerror})",
                              hint="Remove it, or choose another scratch directory.") from None
        try:
            info = os.fstat(fd)
            if info.st_uid not in (owner.uid, os.geteuid()):
                raise EngineError(f"the sandbox's directory {path} exists and belongs to uid {info.st_uid}",
                                  hint="Remove it: moat only uses a directory it created.")
            if os.geteuid() == 0:
                os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def remove(path: Path, trusted: Path) -> None:
    """Remove ``path`` and everything in it; links inside are removed, never followed."""
    try:
        parent = _open_parent(path, trusted)
    except (OSError, ValueError):
        return
    try:
        info = os.lstat(path.name, dir_fd=parent)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path.name, dir_fd=parent, ignore_errors=True)
        else:
            os.unlink(path.name, dir_fd=parent)
    except OSError:
        return
    finally:
        os.close(parent)


def hand_to(path: Path, owner: Identity) -> None:
    """Give a directory moat manages (a host cache) and everything in it to ``owner``, who writes
    there through the sandbox; only root gets here, for a tree that is moat's own."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(root, name), owner.uid, owner.gid, follow_symlinks=False)
    os.chown(path, owner.uid, owner.gid, follow_symlinks=False)

