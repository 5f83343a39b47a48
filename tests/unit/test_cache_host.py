"""The host cache's locks and files: one puller per cache, polling waits, 0600 lock files."""

from __future__ import annotations

import multiprocessing
import stat
import threading
import time
from pathlib import Path

import pytest

from moat.cache import CacheBusy, HostCache, LockAborted, LockTimeout


def hold_in_another_process(home: Path, what: str, ready: multiprocessing.Event, release: multiprocessing.Event
                            ) -> None:  # type: ignore[valid-type]
    cache = HostCache(home)
    if what == "pull":
        context = cache.pulling("ollama", time.monotonic() + 10, threading.Event(), lambda: None)
    elif what == "in-use":
        context = cache.in_use("ollama", time.monotonic() + 10)
    else:
        context = cache.exclusive("ollama")
    with context:
        ready.set()  # type: ignore[attr-defined]
        release.wait(20)  # type: ignore[attr-defined]


@pytest.fixture
def other(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a process holding one of the cache's locks; yields a function to start it."""
    procs = []

    def start(what: str) -> None:
        ctx = multiprocessing.get_context("fork")
        ready, release = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=hold_in_another_process, args=(tmp_path, what, ready, release))
        proc.start()
        assert ready.wait(10)
        procs.append((proc, release))

    yield start
    for proc, release in procs:
        release.set()
        proc.join(10)


def test_only_one_run_pulls_into_a_cache_at_a_time(tmp_path: Path, other) -> None:  # type: ignore[no-untyped-def]
    # Two models can share blobs: two servers writing one blob at once corrupt it.
    other("pull")
    cache = HostCache(tmp_path)
    waited: list[bool] = []
    started = time.monotonic()
    pulling = cache.pulling("ollama", time.monotonic() + 0.3, threading.Event(), lambda: waited.append(True))
    with pytest.raises(LockTimeout), pulling:
        pass
    assert waited == [True] and 0.3 <= time.monotonic() - started < 2
    assert cache.being_pulled("ollama")


def test_waiting_for_the_pull_lock_honours_abort(tmp_path: Path, other) -> None:  # type: ignore[no-untyped-def]
    other("pull")
    abort = threading.Event()
    threading.Timer(0.2, abort.set).start()
    started = time.monotonic()
    with pytest.raises(LockAborted), HostCache(tmp_path).pulling("ollama", time.monotonic() + 30, abort, lambda: None):
        pass
    assert time.monotonic() - started < 2


def test_a_run_waiting_for_a_cache_being_cleaned_never_blocks_forever(tmp_path: Path, other) -> None:  # type: ignore[no-untyped-def]
    # `moat cache clean` holds the cache exclusively: a starting run polls, with a deadline and abort.
    other("exclusive")
    started = time.monotonic()
    with pytest.raises(LockTimeout), HostCache(tmp_path).in_use("ollama", time.monotonic() + 0.3):
        pass
    assert time.monotonic() - started < 2


def test_clean_is_refused_while_a_run_uses_the_cache(tmp_path: Path, other) -> None:  # type: ignore[no-untyped-def]
    other("in-use")
    with pytest.raises(CacheBusy), HostCache(tmp_path).exclusive("ollama"):
        pass
    # Two runs share it.
    with HostCache(tmp_path).in_use("ollama", time.monotonic() + 1):
        pass


def test_lock_files_and_directories_are_private(tmp_path: Path) -> None:
    cache = HostCache(tmp_path / "home")
    with cache.in_use("ollama", time.monotonic() + 1):
        pass
    with cache.pulling("ollama", time.monotonic() + 1, threading.Event(), lambda: None):
        pass
    cache.record_use("ollama", "tiny:1b", pulled=True, image="x")
    for path in (tmp_path / "home").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_clean_never_deletes_through_links_planted_in_the_cache(tmp_path: Path) -> None:
    # Others write the cache (a sidecar as root, the sandbox's user): a manifest whose "digest" is a
    # path, or a blobs directory swapped for a link, must not make `moat cache clean` (run as root)
    # delete files elsewhere.
    import json

    from moat.cache.admin import plan_removal, remove
    from moat.catalog import load_catalog

    victims = tmp_path / "victims"
    victims.mkdir()
    for name in ("target", "sha256-" + "a" * 64):
        (victims / name).write_text("precious")
    cache = HostCache(tmp_path / "home")
    models = cache.service_dir("ollama") / "models"
    (models / "manifests" / "registry.ollama.ai" / "library" / "evil").mkdir(parents=True)
    (models / "manifests" / "registry.ollama.ai" / "library" / "evil" / "latest").write_text(json.dumps(
        {"layers": [{"digest": "x/target", "size": 1}, {"digest": "sha256:" + "a" * 64, "size": 1}]}))
    (models / "blobs").symlink_to(victims)  # the blobs directory is a link to elsewhere
    (models / "x").symlink_to(victims)
    removal = plan_removal(cache, load_catalog(), "ollama", ["evil"])
    remove(cache, removal, lambda paths, root: pytest.fail(f"asked the engine to remove {paths}"))
    assert sorted(p.name for p in victims.iterdir()) == ["sha256-" + "a" * 64, "target"]
    assert all(p.read_text() == "precious" for p in victims.iterdir())
    assert not (models / "manifests" / "registry.ollama.ai" / "library" / "evil" / "latest").exists()
