"""Which agent images `moat clean` removes: only what no run of this MOAT_HOME may still use."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from moat.constants import LABEL_HOME
from moat.ownership import home_id, process_start
from moat.run import reaper
from moat.run.registry import Registry
from moat.run.store import RunStore
from moat.runtime.base import ImageInfo
from tests.unit.fakes import FakeRuntime
from tests.unit.test_registry import record

NOW = 2_000_000_000.0
HOUR = 3600.0


class Images(FakeRuntime):
    def __init__(self, images: list[ImageInfo]) -> None:
        super().__init__()
        self._images = images

    def images(self, repository: str) -> list[ImageInfo]:
        return list(self._images)


def image(tag: str, home: str, age: float, in_use: bool = False) -> ImageInfo:
    return ImageInfo(f"sha256:{tag}", (f"moat/run:{tag}",), 100, in_use, {LABEL_HOME: home}, NOW - age)


def test_clean_keeps_images_a_run_may_still_use(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mine = home_id(home)
    store = RunStore(home)
    # An active run (its owner is this process) names image "about"; it may be about to start it.
    record(home, "run_active", "a", "2026-01-01T00:00:00Z", state="starting", ended_at=None, pid=os.getpid(),
           pid_start=process_start(os.getpid()), host=socket.gethostname(), image="moat/run:about")
    images = [
        image("old", mine, 2 * HOUR),  # ours, old, unused: goes
        image("fresh", mine, 60),  # ours but minutes old: a run may not have recorded it yet
        image("about", mine, 2 * HOUR),  # an active run names it
        image("used", mine, 2 * HOUR, in_use=True),  # a container uses it
        image("theirs", "another-home", 2 * HOUR),  # built by another MOAT_HOME
    ]
    runtime = Images(images)
    own = reaper.find(runtime, Registry(store), finished=True, images="own", now=NOW)
    assert [i.tags[0] for i in own.images] == ["moat/run:old"]
    everything = reaper.find(runtime, Registry(store), finished=True, images="all", now=NOW)
    assert sorted(i.tags[0] for i in everything.images) == ["moat/run:fresh", "moat/run:old", "moat/run:theirs"]
