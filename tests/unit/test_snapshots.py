"""Workspace snapshots (moat.run.snapshots) on real files: what an archive takes (gitignore as git
reads it, .git never, links as links), retention, and restores that leave nothing half-written."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from moat.errors import UsageError
from moat.plan.model import SnapshotPolicy
from moat.run.snapshots import (
    MANUAL,
    PRE_RUN,
    Selection,
    SnapshotError,
    Snapshots,
    retained,
    selection_of,
    walk,
)
from tests.unit.support import plan_for


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


WORKSPACE = {
    ".gitignore": "node_modules/\n*.log\n!keep.log\n/build\n",
    "src/a.py": "print('a')\n",
    "src/.gitignore": "generated/\n/local.txt\n",
    "src/generated/x.py": "x\n",
    "src/local.txt": "local\n",
    "src/deep/local.txt": "deep\n",  # /local.txt in src/.gitignore is anchored to src/
    "node_modules/pkg/index.js": "js\n",
    "debug.log": "noise\n",
    "keep.log": "kept\n",
    "build/out.bin": "bin\n",
    "lib/build/kept.txt": "a nested build/ is not /build\n",
    ".git/config": "[core]\n",
}


def test_a_snapshot_takes_what_git_would_and_never_git(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", WORKSPACE)
    (ws / "link").symlink_to("/etc/passwd")
    taken = sorted(relative for relative, _ in walk(ws, Selection()))
    assert taken == [".gitignore", "keep.log", "lib", "lib/build", "lib/build/kept.txt", "link", "src",
                     "src/.gitignore", "src/a.py", "src/deep", "src/deep/local.txt"]
    everything = sorted(r for r, _ in walk(ws, Selection(use_gitignore=False, additional=("*.bin",))))
    assert "node_modules/pkg/index.js" in everything and "build/out.bin" not in everything
    assert not any(r.startswith(".git/") or r == ".git" for r in everything)


def test_create_restore_to_and_retention(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", WORKSPACE)
    (ws / "link").symlink_to("src/a.py")
    store = Snapshots(tmp_path / "run" / "snapshots")
    first = store.create(ws, PRE_RUN, Selection(), max_count=2)
    assert first.type == PRE_RUN and first.files == 11
    assert oct(store.archive(first).stat().st_mode & 0o777) == "0o600"
    out = tmp_path / "out"
    store.restore_to(first, out)
    assert _digest(out) == {k: v for k, v in _digest(ws).items() if k in {
        ".gitignore", "keep.log", "lib/build/kept.txt", "src/.gitignore", "src/a.py", "src/deep/local.txt"}}
    assert os.readlink(out / "link") == "src/a.py"  # a link stays a link
    with pytest.raises(UsageError, match="not an empty directory"):
        store.restore_to(first, out)
    # Retention: max_count besides the pre-run one; the oldest others go.
    made = [store.create(ws, MANUAL, Selection(), label=str(i), max_count=2) for i in range(3)]
    assert [s.id for s in store.all()] == [first.id, made[1].id, made[2].id]
    assert not store.archive(made[0]).exists()
    assert store.get(None) == made[2] and store.get(made[1].id[:9]) == made[1]
    with pytest.raises(UsageError, match="no snapshot 'snap_nope'"):
        store.get("snap_nope")


def test_restore_in_place_replaces_what_a_snapshot_takes_and_keeps_the_rest(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", WORKSPACE)
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create(ws, PRE_RUN, Selection())
    before = _digest(ws)
    (ws / "src" / "a.py").write_text("changed\n")
    _tree(ws, {"src/new.py": "new\n", "newdir/f": "f\n", "node_modules/pkg/more.js": "ignored, stays\n"})
    (ws / "keep.log").unlink()
    store.restore_in_place(snap, ws, Selection())
    after = _digest(ws)
    assert after == {**before, "node_modules/pkg/more.js": after["node_modules/pkg/more.js"]}
    assert not (ws / "newdir").exists() and not list(ws.glob(".moat-restore-*"))


def test_a_damaged_archive_touches_nothing(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", {"a": "a\n"})
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create(ws, PRE_RUN, Selection())
    data = store.archive(snap).read_bytes()
    store.archive(snap).write_bytes(data[: len(data) // 2])
    (ws / "a").write_text("current\n")
    with pytest.raises(SnapshotError, match="cannot be restored"):
        store.restore_in_place(snap, ws, Selection())
    assert (ws / "a").read_text() == "current\n" and not list(ws.glob(".moat-restore-*"))
    with pytest.raises(SnapshotError):
        store.restore_to(snap, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.moat-restore-*"))


def test_an_archive_cannot_write_outside_its_destination(tmp_path: Path) -> None:
    store = Snapshots(tmp_path / "snapshots")
    ws = _tree(tmp_path / "ws", {"a": "a\n"})
    snap = store.create(ws, MANUAL, Selection())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        evil = tarfile.TarInfo("../escaped")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    store.archive(snap).write_bytes(buffer.getvalue())
    with pytest.raises(UsageError, match="does not exist"):
        store.restore_to(snap, tmp_path / "out" / "inner")  # parent missing: refused before anything
    (tmp_path / "out").mkdir()
    with pytest.raises(SnapshotError):
        store.restore_to(snap, tmp_path / "out" / "inner")
    assert not (tmp_path / "out" / "escaped").exists() and not (tmp_path / "escaped").exists()


def test_a_tar_stream_becomes_a_snapshot_without_its_top_directory(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in (("workspace/a.txt", b"A"), ("workspace/sub/b.txt", b"B")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    raw = buffer.getvalue()
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create_from_tar((raw[i:i + 1000] for i in range(0, len(raw), 1000)), MANUAL)
    assert snap.files == 2
    store.restore_to(snap, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "B"


def test_retained_keeps_the_pre_run_one_unless_told() -> None:
    from moat.run.snapshots import Snapshot

    snaps = [Snapshot(f"s{i}", PRE_RUN if i == 0 else MANUAL, f"t{i}", 1, 1) for i in range(4)]
    assert [s.id for s in retained(snaps, 2, keep_initial=True)] == ["s1"]
    assert [s.id for s in retained(snaps, 2, keep_initial=False)] == ["s0", "s1"]
    assert retained(snaps, 10, keep_initial=True) == []


def test_the_plan_carries_moat_yamls_snapshots() -> None:
    assert plan_for("").snapshots == SnapshotPolicy()
    assert plan_for("snapshots: {disabled: true}\n").snapshots is None
    policy = plan_for("snapshots:\n  triggers: {disable_pre_run: true}\n  exclude: {ignore_gitignore: true,"
                      " additional: [dist/]}\n  retention: {max_count: 3, delete_initial: true}\n").snapshots
    assert policy == SnapshotPolicy(False, False, ("dist/",), 3, True)
    assert selection_of(policy) == Selection(False, ("dist/",), False)


def test_restoring_keeps_what_the_snapshots_rules_ignored_even_if_the_agent_removed_them(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", {".gitignore": "cache/\n", "a": "a\n", "cache/big": "keep me\n"})
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create(ws, PRE_RUN, Selection())
    (ws / ".gitignore").unlink()  # now cache/ is no longer ignored in the workspace
    store.restore_in_place(snap, ws, Selection())
    assert (ws / "cache" / "big").read_text() == "keep me\n" and (ws / ".gitignore").exists()


def test_a_restore_that_would_clash_with_what_stays_changes_nothing(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", {".gitignore": "cache\n", "cache": "a file\n", "a.txt": "a\n", "b.txt": "b\n"})
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create(ws, MANUAL, Selection())  # cache (ignored) is not in it
    (ws / "cache").unlink()
    _tree(ws, {"cache/o": "x\n"})  # now a directory where ... nothing of the snapshot is: fine
    (ws / "a.txt").write_text("A2\n")
    store.restore_in_place(snap, ws, Selection())
    assert (ws / "a.txt").read_text() == "a\n" and (ws / "cache" / "o").exists()
    # The snapshot has a file where a directory with kept (ignored) files stays: refused, untouched.
    ws2 = _tree(tmp_path / "ws2", {".gitignore": "*.log\n", "data": "was a file\n", "keep.txt": "k\n"})
    snap2 = store.create(ws2, MANUAL, Selection())
    (ws2 / "data").unlink()
    _tree(ws2, {"data/run.log": "ignored\n", "data/x": "x\n", "new.txt": "new\n"})
    before = {p.relative_to(ws2) for p in ws2.rglob("*")}
    with pytest.raises(SnapshotError, match="nothing was changed"):
        store.restore_in_place(snap2, ws2, Selection())
    assert {p.relative_to(ws2) for p in ws2.rglob("*")} == before


def test_links_are_restored_as_links_even_absolute_ones_and_nothing_goes_through_them(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", {"venv/bin/activate": "x\n"})
    (ws / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (ws / "rel").symlink_to("venv/bin")
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create(ws, MANUAL, Selection())
    store.restore_to(snap, tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "venv" / "bin" / "python") == "/usr/bin/python3"
    assert os.readlink(tmp_path / "out" / "rel") == "venv/bin"
    # An archive that would write through a link it made is refused.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "victim")
        tar.addfile(link)
        evil = tarfile.TarInfo("escape/planted")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    store.archive(snap).write_bytes(buffer.getvalue())
    (tmp_path / "victim").mkdir()
    with pytest.raises(SnapshotError):
        store.restore_to(snap, tmp_path / "out2")
    assert not (tmp_path / "victim" / "planted").exists() and not (tmp_path / "out2").exists()


def test_nested_repositories_and_odd_gitignores(tmp_path: Path) -> None:
    ws = _tree(tmp_path / "ws", {"lib/.git/HEAD": "ref\n", "lib/code.py": "x\n"})
    os.mkfifo(ws / ".gitignore")  # a FIFO would block a reader forever
    (ws / "lib" / ".gitignore").symlink_to("/dev/zero")  # and this one never end
    # The FIFO is no file to keep; the link is kept as a link; lib/.git is a repository's, never taken.
    assert sorted(r for r, _ in walk(ws, Selection())) == ["lib", "lib/.gitignore", "lib/code.py"]


def test_hard_links_of_a_tar_stream_are_kept(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("workspace/a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"A"))
        hard = tarfile.TarInfo("workspace/sub/b.txt")
        hard.type, hard.linkname = tarfile.LNKTYPE, "workspace/a.txt"
        tar.addfile(hard)
    store = Snapshots(tmp_path / "snapshots")
    snap = store.create_from_tar([buffer.getvalue()], MANUAL)
    store.restore_to(snap, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "A"
