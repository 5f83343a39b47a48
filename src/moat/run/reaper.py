"""Finding and removing what runs left on the engine.

An engine object carrying ``moat.run-id`` belongs to:
- an *active* run (being created or running, its owner alive): never touched;
- an *orphaned* run (its owner died) or a run whose record is gone: always fair game;
- a *finished* run (e.g. an agent container kept with ``--keep``): removed by ``moat clean`` only.

Agent images (``moat/run:*``) are shared by every run with the same dependencies. ``moat clean``
removes one only when no container uses it, no active run of this MOAT_HOME names it (one may be
about to start it), it was built by this MOAT_HOME, and it is older than ``IMAGE_GRACE``;
``--images`` drops the last two conditions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from moat.constants import (
    AGENT_IMAGE_REPO,
    LABEL_HOME,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_RUN_ID,
)
from moat.errors import MoatError
from moat.files import now_iso, write_private
from moat.ownership import home_id, process_alive
from moat.run.registry import ACTIVE_STATES, Registry, RunInfo
from moat.run.store import METADATA
from moat.runtime.base import EngineObject, ImageInfo, Runtime

_ORDER = {"container": 0, "network": 1, "volume": 2}  # containers first: they hold the others
IMAGE_GRACE = 3600.0  # seconds: a younger image may belong to a run that has not recorded it yet
Images = Literal["none", "own", "all"]


@dataclass
class Leftovers:
    objects: list[tuple[EngineObject, str]] = field(default_factory=list)  # (object, why)
    images: list[ImageInfo] = field(default_factory=list)
    orphaned_runs: list[RunInfo] = field(default_factory=list)
    finished_runs: list[RunInfo] = field(default_factory=list)  # whose kept objects go (their files too)

    @property
    def empty(self) -> bool:
        return not (self.objects or self.images or self.orphaned_runs)


def find(runtime: Runtime, registry: Registry, *, finished: bool, images: Images = "none",
         only_run: str | None = None, now: float | None = None) -> Leftovers:
    runs = {r.id: r for r in registry.all() if only_run in (None, r.id)}
    home = home_id(registry.store.home)
    found = Leftovers()
    orphaned: dict[str, RunInfo] = {}
    for obj in runtime.objects_with_label(LABEL_RUN_ID):
        run_id = obj.labels.get(LABEL_RUN_ID, "")
        if only_run is not None and run_id != only_run:
            continue
        run = runs.get(run_id)
        if run is None:
            if obj.labels.get(LABEL_HOME) != home:
                continue  # another MOAT_HOME's (another user's, a test's): not ours to judge
            pid = obj.labels.get(LABEL_OWNER_PID, "")
            if pid.isdigit() and process_alive(int(pid), obj.labels.get(LABEL_OWNER_HOST),
                                               obj.labels.get(LABEL_OWNER_START)):
                continue  # its owner is alive (e.g. a cache-clean helper at work)
            found.objects.append((obj, f"run {run_id} has no record"))
        elif run.active:
            continue
        elif run.orphaned:
            found.objects.append((obj, f"run {run_id}'s moat process is gone"))
            orphaned[run.id] = run
        elif finished:
            found.objects.append((obj, f"run {run_id} has finished ({run.recorded_state})"))
            if run not in found.finished_runs:
                found.finished_runs.append(run)
    # Orphaned runs with nothing left on the engine still need their record settled.
    for run in runs.values():
        if run.orphaned and run.metadata.get("runtime", runtime.name) == runtime.name:
            orphaned.setdefault(run.id, run)
    found.orphaned_runs = list(orphaned.values())
    found.objects.sort(key=lambda item: _ORDER[item[0].kind])
    if images != "none":
        found.images = _unused_images(runtime, registry, home, images, time.time() if now is None else now)
    return found


def _unused_images(runtime: Runtime, registry: Registry, home: str, which: Images, now: float) -> list[ImageInfo]:
    wanted = {str(r.metadata.get("image")) for r in registry.all() if r.active}
    unused = []
    for image in runtime.images(AGENT_IMAGE_REPO):
        if image.in_use or wanted & set(image.tags):
            continue
        if which == "own" and (image.labels.get(LABEL_HOME) != home or now - image.created < IMAGE_GRACE):
            continue
        unused.append(image)
    return unused


def remove(runtime: Runtime, leftovers: Leftovers) -> list[str]:
    """Remove everything found; returns the problems (anything that could not be removed)."""
    problems = []
    removers = {"container": runtime.remove_container, "network": runtime.remove_network,
                "volume": runtime.remove_volume}
    for obj, _ in leftovers.objects:
        try:
            removers[obj.kind](obj.id)
        except MoatError as exc:
            problems.append(exc.message)
    for image in leftovers.images:
        try:
            runtime.remove_image(image.id)
        except MoatError as exc:
            problems.append(exc.message)
    for run in leftovers.orphaned_runs:
        problems += _unregister(run)
        settle_orphan(run)
    for run in (*leftovers.orphaned_runs, *leftovers.finished_runs):
        remove_scratch(run)
    return problems


def remove_scratch(run: RunInfo) -> None:
    """The run's private host directory (its agent's context file, grant files): what its teardown
    would have removed, had it run (killed), or left for a kept agent. Only a directory of this
    user's named after the run: the record says where, and nothing else is touched."""
    text = run.metadata.get("scratch")
    if not isinstance(text, str) or not text:
        return
    path = Path(text)
    if not path.is_absolute() or path.name != f"moat-{run.id}":
        return
    try:
        info = os.lstat(path)
    except OSError:
        return  # gone already
    # Not a link, and ours: the sandbox's directories belong to the agent's user, and its runtime
    # removes them with the run's network.
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
        shutil.rmtree(path, ignore_errors=True)


def _unregister(run: RunInfo) -> list[str]:
    """A run killed before its teardown leaves its grants in the shared proxy: they go with it."""
    if not run.metadata.get("proxy"):
        return []
    from moat.run.proxyuse import DaemonProxy  # noqa: PLC0415 — only runs that had grants need it

    home = run.directory.parent.parent  # MOAT_HOME/runs/<id>
    try:
        DaemonProxy(home).unregister(run.id)
    except MoatError as exc:
        return [f"{run.id}: its grants could not be removed from moat's proxy: {exc.message}"]
    return []


def settle_orphan(run: RunInfo) -> None:
    """Record that the run's moat process died before it could finish the run."""
    metadata = dict(run.metadata)
    if metadata.get("state") in ACTIVE_STATES:
        metadata.update(state="failed", error="moat's process ended before the run finished (orphaned; cleaned up)")
    if not metadata.get("ended_at"):
        # When it was found, not when it ended: whatever reads the run's time window must know.
        metadata.update(ended_at=now_iso(), ended_unknown=True)
    with contextlib.suppress(OSError):
        write_private(run.directory / METADATA, json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def reap_orphans(runtime: Runtime, registry: Registry) -> list[str]:
    """What a new ``moat run`` does first: remove what crashed runs left (never finished runs')."""
    return remove(runtime, find(runtime, registry, finished=False))
