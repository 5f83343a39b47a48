"""Workspace snapshots: gzipped tar archives of a run's workspace, kept with its record
(``MOAT_HOME/runs/<id>/snapshots``: ``snap_<hex>.tar.gz`` 0600 and ``snapshots.json``), as the Go
tool keeps them.

- What is captured: every file, directory and link (links as links, never followed) but ``.git``,
  what the workspace's ``.gitignore`` files ignore (unless ``ignore_gitignore``) and the
  ``additional`` patterns (gitignore syntax). Sockets, FIFOs and devices are not files to keep.
- A snapshot is written to a temporary name and renamed into place; the index is rewritten whole
  (atomically) under a lock: a crash or a concurrent ``moat snapshot`` leaves no half snapshot.
- Restoring extracts with tarfile's ``data`` filter (no absolute paths, no ``..``, no link out of the
  destination, no device, no setuid bit) into a staging directory first: a damaged archive fails
  there and the destination is not touched. ``--to DIR`` needs DIR missing or empty and appears
  whole or not at all (one rename). In place, what the snapshot could have captured is replaced by
  what it did capture; what it never captures (``.git``, ignored files) stays.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pathspec
from filelock import FileLock

from moat.errors import MoatError, UsageError
from moat.files import now_iso, private_dir, write_private
from moat.plan.identity import Identity
from moat.plan.model import SnapshotPolicy, WorkspaceCopy

INDEX = "snapshots.json"
EXTRACTED = "extracted.json"  # the restores --to DIR: where the work went
PRE_RUN = "pre-run"
MANUAL = "manual"
FINAL = "final"  # a Kubernetes run's copied workspace, as the agent left it
# Bounds, as the Go tool's: a workspace past them is not snapshotted (a warning, never a stall).
MAX_FILES = 100_000
MAX_TOTAL_BYTES = 10 << 30
MAX_IGNORE_BYTES = 1 << 20  # a .gitignore past this is not read


class SnapshotError(MoatError):
    pass


@dataclass(frozen=True)
class Snapshot:
    id: str
    type: str  # pre-run, manual, final (a Kubernetes run's workspace at its end)
    created_at: str
    size_bytes: int
    files: int
    label: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    """What a snapshot of a workspace takes (snapshots.exclude)."""

    use_gitignore: bool = True
    additional: tuple[str, ...] = ()
    include_git: bool = False


def selection_of(policy: SnapshotPolicy, include_git: bool = False) -> Selection:
    return Selection(policy.use_gitignore, policy.additional, include_git)


class _Matcher:
    """Gitignore rules as git applies them: each ``.gitignore`` for its own directory and below,
    later (deeper) files and lines winning, ``!`` re-including."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.lines: list[str] = list(selection.additional)
        self.spec = pathspec.GitIgnoreSpec.from_lines(self.lines)

    def read(self, directory: Path, relative: str) -> None:
        if not self.selection.use_gitignore:
            return
        path = directory / ".gitignore"
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IGNORE_BYTES:
                return  # a FIFO would block, a link to /dev/zero never end: only a file is read
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                text = handle.read(MAX_IGNORE_BYTES).decode(errors="replace")
        except OSError:
            return
        added = [_rebase(line, relative) for line in text.splitlines()]
        added = [line for line in added if line]
        if added:
            self.lines += added
            self.spec = pathspec.GitIgnoreSpec.from_lines(self.lines)

    def ignored(self, relative: str, is_dir: bool) -> bool:
        if not self.selection.include_git and ".git" in relative.split("/"):
            return True  # the workspace's repository, and any nested one
        return self.spec.match_file(relative + "/" if is_dir else relative)


def _rebase(line: str, base: str) -> str:
    """A line of ``<base>/.gitignore`` as a line of the workspace's own."""
    text = line.rstrip("\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return ""
    if not base:
        return text
    negate = text.startswith("!")
    body = text[1:] if negate else text
    anchored = "/" in body.rstrip("/")
    body = body.lstrip("/")
    rebased = f"{base}/{body}" if anchored else f"{base}/**/{body}"
    return ("!" if negate else "") + rebased


def walk(workspace: Path, selection: Selection, abort: threading.Event | None = None,
         rules_also_from: Path | None = None) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of everything a snapshot of ``workspace`` takes, parents first. With
    ``rules_also_from`` (a snapshot's tree), its .gitignore files count too: a path either ignores is
    left out."""
    matcher = _Matcher(selection)
    pending: list[tuple[Path, str]] = [(workspace, "")]
    while pending:
        directory, relative = pending.pop()
        if abort is not None and abort.is_set():
            raise SnapshotError("the snapshot was stopped")
        matcher.read(directory, relative)
        if rules_also_from is not None:
            matcher.read(rules_also_from / relative if relative else rules_also_from, relative)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise SnapshotError(f"cannot read {directory}: {exc.strerror}") from None
        subdirectories = []
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if name.startswith(".moat-restore-") or matcher.ignored(name, is_dir):
                continue
            mode = entry.stat(follow_symlinks=False).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                continue
            yield name, Path(entry.path)
            if is_dir:
                subdirectories.append((Path(entry.path), name))
        pending += reversed(subdirectories)


class Snapshots:
    """One run's snapshots."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = FileLock(str(directory.parent / ".snapshots.lock"), mode=0o600)

    # --- the index ---------------------------------------------------------------------------------

    def all(self) -> list[Snapshot]:
        """Oldest first."""
        try:
            raw = json.loads((self.directory / INDEX).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"the snapshot index {self.directory / INDEX} cannot be read: {exc}",
                                hint="Remove it to start over (the archives beside it stay).") from None
        return [Snapshot(**{k: item[k] for k in Snapshot.__dataclass_fields__ if k in item}) for item in raw]

    def _save(self, snapshots: list[Snapshot]) -> None:
        write_private(self.directory / INDEX, json.dumps([s.to_dict() for s in snapshots], indent=2) + "\n")

    def archive(self, snapshot: Snapshot) -> Path:
        return self.directory / f"{snapshot.id}.tar.gz"

    def get(self, snapshot_id: str | None) -> Snapshot:
        found = self.all()
        if not found:
            raise UsageError("the run has no snapshots", hint="`moat snapshot RUN` takes one.")
        if snapshot_id is None:
            return found[-1]
        if not snapshot_id.strip():
            raise UsageError("an empty snapshot id", hint="`moat snapshot list RUN` lists them.")
        matches = [s for s in found if s.id == snapshot_id or s.id.startswith(snapshot_id)]
        if len(matches) != 1:
            known = ", ".join(s.id for s in found)
            which = "no" if not matches else "more than one"
            raise UsageError(f"{which} snapshot {snapshot_id!r} (the run has {known})")
        return matches[0]

    # --- making ------------------------------------------------------------------------------------

    def create(self, workspace: Path, kind: str, selection: Selection, *, label: str = "", max_count: int = 0,
               keep_initial: bool = True, abort: threading.Event | None = None) -> Snapshot:
        """A snapshot of the host directory ``workspace``; then the retention (``max_count``)."""

        def write(tar: tarfile.TarFile) -> int:
            count, total = 0, 0
            for relative, path in walk(workspace, selection, abort):
                info = tar.gettarinfo(str(path), arcname=relative)
                count += 1
                total += info.size if info.isreg() else 0
                if count > MAX_FILES or total > MAX_TOTAL_BYTES:
                    raise SnapshotError(f"{workspace} holds more than {MAX_FILES:,} files or"
                                        f" {MAX_TOTAL_BYTES >> 30} GiB: not snapshotted",
                                        hint="Exclude the bulk in snapshots.exclude.additional (e.g."
                                             " node_modules/), or set snapshots.disabled: true.")
                if info.isreg():
                    with path.open("rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
            return count

        return self._store(write, kind, label, max_count, keep_initial)

    def create_from_tar(self, stream: Iterable[bytes], kind: str, *, label: str = "", max_count: int = 0,
                        keep_initial: bool = True) -> Snapshot:
        """A snapshot from an uncompressed tar stream (a volume's contents, as an engine exports them),
        its top directory stripped."""

        def write(tar: tarfile.TarFile) -> int:
            count = 0
            with tarfile.open(fileobj=io.BufferedReader(_Chunks(iter(stream))), mode="r|") as reader:
                for member in reader:
                    name = member.name.split("/", 1)[1] if "/" in member.name else ""
                    if not name or not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                        continue
                    member.name = name
                    if member.islnk():  # a second name of a file: the top directory goes from its target too
                        member.linkname = member.linkname.split("/", 1)[1] if "/" in member.linkname else ""
                        if not member.linkname:
                            continue
                    count += 1
                    tar.addfile(member, reader.extractfile(member) if member.isreg() else None)
            return count

        return self._store(write, kind, label, max_count, keep_initial)

    def _store(self, write: Callable[[tarfile.TarFile], int], kind: str, label: str, max_count: int,
               keep_initial: bool) -> Snapshot:
        private_dir(self.directory)
        snapshot_id = f"snap_{secrets.token_hex(6)}"
        final = self.directory / f"{snapshot_id}.tar.gz"
        partial = self.directory / f".{snapshot_id}.partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as zipped, \
                    tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                files = write(tar)
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        snapshot = Snapshot(snapshot_id, kind, now_iso(), final.stat().st_size, files, label)
        with self._lock:
            found = [*self.all(), snapshot]
            dropped = retained(found, max_count, keep_initial) if max_count else []
            self._save([s for s in found if s not in dropped])
        for old in dropped:
            with contextlib.suppress(OSError):
                self.archive(old).unlink()
        return snapshot

    def delete(self, doomed: list[Snapshot]) -> None:
        with self._lock:
            ids = {s.id for s in doomed}
            self._save([s for s in self.all() if s.id not in ids])
        for snapshot in doomed:
            with contextlib.suppress(OSError):
                self.archive(snapshot).unlink()

    # --- restoring ---------------------------------------------------------------------------------

    def extract(self, snapshot: Snapshot, destination: Path) -> None:
        """Into ``destination`` (a new, empty directory), member by member, as tarfile's ``data``
        filter would (not in every Python 3.11: written out here): no absolute path, no ``..``, never
        through a link, no device or FIFO, no setuid, setgid or sticky bit, no group or other write,
        owned by whoever restores; a hard link only to a file of the snapshot's. Symbolic links are
        kept as they were (``/usr/bin/python3`` in a virtualenv too), made last so that nothing is
        ever written through one."""
        try:
            with tarfile.open(self.archive(snapshot), mode="r:gz") as tar:
                links = []
                directories: list[tuple[Path, tarfile.TarInfo]] = []
                for member in tar:
                    if member.issym():
                        links.append(member)
                        continue
                    path = _inside(destination, member.name)
                    if member.isdir():
                        if not path.is_dir():
                            path.mkdir(mode=0o700)
                        directories.append((path, member))
                    elif member.isreg():
                        source = tar.extractfile(member)
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                        with os.fdopen(fd, "wb") as out:
                            if source is not None:
                                shutil.copyfileobj(source, out)
                        _settle(path, member)
                    elif member.islnk():
                        target = _inside(destination, member.linkname)
                        if target.is_symlink() or not target.is_file():
                            raise tarfile.TarError(f"{member.name!r} links to {member.linkname!r}, no file of the"
                                                   " snapshot")
                        os.link(target, path)
                    # anything else (a device, a FIFO) is no file to restore
                for path, member in reversed(directories):  # a directory's mode once its files are in
                    _settle(path, member)
                for link in links:
                    _make_link(destination, link)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise SnapshotError(f"snapshot {snapshot.id} cannot be restored: {exc}") from None

    def extracted(self) -> list[dict[str, str]]:
        """Where snapshots were restored to with --to (what makes a volume workspace safe to destroy)."""
        try:
            found = json.loads((self.directory / EXTRACTED).read_text())
        except (OSError, ValueError):
            return []
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    def restore_to(self, snapshot: Snapshot, target: Path, owner: tuple[int, int] | None = None) -> None:
        """``target`` (missing or empty) made the snapshot's contents, whole or not at all."""
        if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
            raise UsageError(f"{target} is not an empty directory; nothing was restored",
                             hint="Restore into a new directory (it is made), or empty this one.")
        parent = target.parent
        if not parent.is_dir():
            raise UsageError(f"{parent} does not exist; nothing was restored")
        staging = parent / f".{target.name}.moat-restore-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            self.extract(snapshot, staging)
            staging.chmod(0o755)
            if owner is not None:
                _chown_tree(staging, owner)
            if target.exists():
                target.rmdir()
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self._lock:
            write_private(self.directory / EXTRACTED, json.dumps(
                [*self.extracted(), {"id": snapshot.id, "to": str(target), "at": now_iso()}], indent=2) + "\n")

    def restore_in_place(self, snapshot: Snapshot, workspace: Path, selection: Selection,
                         owner: tuple[int, int] | None = None) -> None:
        """What a snapshot of ``workspace`` would take, replaced by what this one took; the rest
        (``.git``, ignored files) stays."""
        staging = workspace / f".moat-restore-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            self.extract(snapshot, staging)  # whole, or the workspace is untouched
            if owner is not None:
                _chown_tree(staging, owner)
            # What either the workspace's rules or the snapshot's ignore stays (an agent that removed a
            # .gitignore does not get the ignored files deleted).
            current = [relative for relative, _ in walk(workspace, selection, rules_also_from=staging)]
            _check_clashes(staging, workspace, set(current))  # before anything is deleted
            for relative in reversed(current):  # children before their directories
                path = workspace / relative
                if path.is_dir() and not path.is_symlink():
                    with contextlib.suppress(OSError):  # not empty: ignored files stay in it
                        path.rmdir()
                else:
                    path.unlink(missing_ok=True)
            _move_into(staging, workspace)
        except OSError as exc:
            raise SnapshotError(f"restoring {snapshot.id} into {workspace} failed part-way: {exc}",
                                hint=f"Restore it elsewhere to compare: moat snapshot restore RUN {snapshot.id} --to"
                                     " DIR.") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def copy_archive(copy: WorkspaceCopy, identity: Identity, scratch: Path,
                 abort: threading.Event | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """(an open tar of the workspace for a volume workspace, its entry count): everything but the
    excluded patterns (gitignore syntax), ``.git`` whole, every entry the agent's user's. In the run's
    private scratch directory, removed afterwards."""
    # Relative to the workspace's top, as a bind mount's exclude is (node_modules, not **/node_modules).
    selection = Selection(use_gitignore=False, additional=tuple("/" + p.lstrip("/") for p in copy.excluded),
                          include_git=True)
    private_dir(scratch)
    fd, name = tempfile.mkstemp(prefix="workspace-", suffix=".tar", dir=scratch)
    try:
        with os.fdopen(fd, "w+b") as handle:
            count = 0
            with tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for relative, path in walk(Path(copy.source), selection, abort):
                    info = tar.gettarinfo(str(path), arcname=relative)
                    info.uid, info.gid, info.uname, info.gname = identity.uid, identity.gid, "", ""
                    info.mode &= 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)
                    if info.isreg():
                        with path.open("rb") as source:
                            tar.addfile(info, source)
                    else:
                        tar.addfile(info)
                    count += 1
            handle.seek(0)
            yield handle, count
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _inside(destination: Path, name: str) -> Path:
    """Where a member goes: under ``destination``, its parents real directories there (never a link)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise tarfile.TarError(f"{name!r} is outside the snapshot")
    parent = destination
    for part in parts[:-1]:
        parent = parent / part
        if not os.path.lexists(parent):
            parent.mkdir(mode=0o755)  # an archive need not list every directory
        elif parent.is_symlink() or not parent.is_dir():
            raise tarfile.TarError(f"{name!r}: {parent} is not a directory of the snapshot")
    return parent / parts[-1]


def _settle(path: Path, member: tarfile.TarInfo) -> None:
    """The member's mode (without setuid, setgid, sticky, group or other write; always the owner's to
    read and write, a directory's to enter too: a 0555 directory would stop the restore that fills
    it, and the clean-up of a failed one) and time."""
    os.chmod(path, (member.mode & 0o755) | (0o700 if member.isdir() else 0o600), follow_symlinks=False)
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _make_link(destination: Path, member: tarfile.TarInfo) -> None:
    """A symbolic link of the archive's, inside ``destination``, its parents real directories there."""
    target = _inside(destination, member.name)
    if os.path.lexists(target):
        raise tarfile.TarError(f"{member.name!r} is in the snapshot twice")
    os.symlink(member.linkname, target)


def retained(snapshots: list[Snapshot], keep: int, keep_initial: bool) -> list[Snapshot]:
    """Which of ``snapshots`` (oldest first) go so that ``keep`` remain, besides the pre-run one when
    ``keep_initial``."""
    candidates = [s for s in snapshots if not (keep_initial and s.type == PRE_RUN)]
    excess = len(candidates) - keep
    return candidates[:excess] if excess > 0 else []


def _check_clashes(staging: Path, workspace: Path, replaced: set[str], relative: str = "") -> None:
    """What stays in the workspace (what a snapshot does not take) must not stand where the snapshot
    puts something of another kind (a directory where it has a file, a link, …)."""
    for entry in os.scandir(staging / relative if relative else staging):
        name = f"{relative}/{entry.name}" if relative else entry.name
        target = workspace / name
        staged_dir = entry.is_dir(follow_symlinks=False)
        is_dir = target.is_dir() and not target.is_symlink()
        # A replaced directory with kept files in it stays, as a directory.
        stays_dir = is_dir and name in replaced and not staged_dir and any(
            f"{name}/{p.relative_to(target)}" not in replaced for p in target.rglob("*"))
        if stays_dir or (os.path.lexists(target) and name not in replaced):
            kept_dir = is_dir
            if staged_dir != kept_dir or target.is_symlink():
                raise SnapshotError(f"{target} is not part of what snapshots take (.git, or ignored), and the"
                                    f" snapshot has {'a directory' if staged_dir else 'a file'} there; nothing was"
                                    " changed", hint="Move it away, or restore with --to DIR.")
        if staged_dir:
            _check_clashes(staging, workspace, replaced, name)


def _move_into(source: Path, destination: Path) -> None:
    for entry in os.scandir(source):
        target = destination / entry.name
        if entry.is_dir(follow_symlinks=False) and target.is_dir() and not target.is_symlink():
            _move_into(Path(entry.path), target)  # a directory that stayed (ignored files in it)
            with contextlib.suppress(OSError):
                shutil.copystat(entry.path, target)
        else:
            os.replace(entry.path, target)


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    if os.geteuid() != 0:
        return
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(directory, name), *owner)
    os.lchown(root, *owner)


class _Chunks(io.RawIOBase):
    """A readable stream of an iterator of byte chunks (what an engine's archive export yields)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = chunk
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self.pending))
        view[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size
