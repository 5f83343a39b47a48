"""Teardown: what every run ends with, whatever ended it.

Save each sidecar's log, hand host-cache files back to the user, remove the containers (with their
anonymous volumes), the agent (unless --keep) and the network, then sweep by label for anything
created as a signal arrived. Signals are deferred, never obeyed, until it is done.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from moat.constants import LABEL_RUN_ID
from moat.errors import MoatError
from moat.run.signals import interrupts_deferred
from moat.run.store import SERVICE_LOGS_DIR

if TYPE_CHECKING:
    from moat.run.lifecycle import RunExecution

WORKER_GRACE = 15.0  # seconds teardown waits for start-up threads to notice the abort
REAPER_GRACE = 10.0  # seconds teardown waits for the orphan reaper
AGENT_STOP_GRACE = 5.0  # seconds an interrupted agent gets between SIGTERM and SIGKILL


def teardown(run: RunExecution, outcome: BaseException | None) -> None:
    def notice(_signum: int) -> None:
        run.report.warn("still cleaning up; moat will exit when the run's containers are removed")

    with interrupts_deferred(notice):
        run.abort.set()
        run.report.pause()
        if run.workers is not None:
            run.workers.shutdown(wait=False, cancel_futures=True)
            _join_workers()
        _return_cache_files(run)
        problems = _remove_created(run)
        problems += _sweep(run)
        run.cache_holds.close()
        if run.reaper is not None:
            run.reaper.join(REAPER_GRACE)  # let it finish what it started
    for problem in problems:
        run.report.warn(problem)
    if problems and outcome is None:
        run.report.warn(f"run {run.plan.run_id} left engine objects behind; `moat clean` removes them")


def _return_cache_files(run: RunExecution) -> None:
    """Sidecars write the host cache as root; give what they wrote to the user running moat,
    so `moat cache clean` (and the user) can remove it without privileges."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0 or not run.runtime.writes_as_root:
        return
    for spec in run.plan.services:
        container_id = run.created.services.get(spec.name)
        if spec.cache_path and container_id:
            with contextlib.suppress(MoatError):
                run.runtime.exec(container_id, ("chown", "-R", f"{uid}:{gid}", spec.cache_path), {})


def _join_workers() -> None:
    deadline = time.monotonic() + WORKER_GRACE
    for thread in threading.enumerate():
        if thread.name.startswith("moat") and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _remove_created(run: RunExecution) -> list[str]:
    problems: list[str] = []
    record = run.record_()
    created = run.created
    with created.lock:
        services = dict(created.services)
    for name, container_id in services.items():
        try:
            record.write_file(f"{SERVICE_LOGS_DIR}/{name}.log", run.runtime.logs(container_id, timestamps=True))
        except MoatError as exc:
            problems.append(f"could not save {name}'s log: {exc.message}")
    # --keep keeps an agent that ran; one that never got its turn (held, or not started) goes.
    keep = run.options.keep and run.agent_released
    if created.agent and run.agent_released:
        # SIGTERM first, as `docker stop` does: an agent may want to save its work.
        with contextlib.suppress(MoatError):
            run.runtime.stop_container(created.agent, AGENT_STOP_GRACE)
    # Containers go in parallel: each removal waits for its process to stop.
    targets = list(services.values())
    if created.agent and not keep:
        targets.append(created.agent)
    problems += _parallel(run.runtime.remove_container, targets)
    if created.agent and keep and created.network:
        problems += _parallel(lambda cid: run.runtime.disconnect(cid, run.plan.network), [created.agent])
        if run.runtime.name == "docker":
            run.report.info(f"kept the agent container {run.agent_name()} (--keep)")
    if created.network:
        problems += _parallel(run.runtime.remove_network, [run.plan.network])
    return problems


def _sweep(run: RunExecution) -> list[str]:
    """Anything labelled with this run's id that is still there (e.g. created as a signal hit)."""
    try:
        left = run.runtime.find_labelled({LABEL_RUN_ID: run.plan.run_id})
    except MoatError as exc:
        return [f"could not check for leftovers: {exc.message}"]
    kept = run.options.keep and run.agent_released
    containers = [c for c in left.containers if not (kept and c == run.created.agent)]
    problems = _parallel(run.runtime.remove_container, containers)
    problems += _parallel(run.runtime.remove_network, left.networks)
    problems += _parallel(run.runtime.remove_volume, left.volumes)
    return problems


def _parallel(action: Callable[[str], None], items: list[str]) -> list[str]:
    """Run ``action`` on each item concurrently; return the failures as messages."""
    if not items:
        return []
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=min(8, len(items)), thread_name_prefix="teardown") as pool:
        futures = {pool.submit(action, item): item for item in items}
        for future, item in futures.items():
            error = future.exception()
            if error is not None:
                problems.append(f"could not remove {item}: {getattr(error, 'message', error)}")
    return problems
