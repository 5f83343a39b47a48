"""Stopping runs from another process: ``moat stop`` and ``moat destroy``."""

from __future__ import annotations

import signal
import time

from moat.constants import LABEL_RUN_ID
from moat.errors import MoatError
from moat.ownership import same_host, signal_process
from moat.run import reaper
from moat.run.registry import Registry, RunInfo
from moat.runtime.base import Runtime

POLL = 0.1


def stop(registry: Registry, info: RunInfo, runtime: Runtime | None, timeout: float) -> str:
    """Ask the run's owner to stop (SIGTERM) and wait until it has torn down; reap an orphan here."""
    if not same_host(info.metadata.get("host")):
        raise MoatError(f"{info.id} ({info.name}) belongs to a moat on {info.metadata.get('host')}: stop it there")
    if not info.active:
        if info.orphaned:
            return _reap(registry, info, runtime)
        return f"{info.id} ({info.name}) is not running ({info.state})"
    # The owner may change while we wait (a detached run's foreground hands it to its supervisor):
    # whoever owns the run gets the SIGTERM, pinned by a pidfd and checked against its start time so
    # that a reused pid never gets it.
    signalled: set[tuple[int, str | None]] = set()
    deadline = time.monotonic() + timeout
    current: RunInfo | None = info
    while current is not None and current.active:
        owner = (current.owner_pid, current.metadata.get("pid_start"))
        if owner not in signalled and owner[0] > 0:
            signalled.add(owner)
            signal_process(owner[0], owner[1], signal.SIGTERM)
        if time.monotonic() >= deadline:
            raise MoatError(f"{info.id} ({info.name}) did not stop within {timeout:g}s (moat pid {owner[0]})",
                            hint="Its teardown may be slow: `moat list` shows when it ends; `moat clean` reaps"
                                 " leftovers.")
        time.sleep(POLL)
        current = registry.get(info.id)
    if current is not None and current.orphaned:
        # Its owner died instead of finishing (killed while we waited): what it left is reaped here.
        return _reap(registry, current, runtime)
    return f"stopped {info.id} ({info.name})"


def _reap(registry: Registry, info: RunInfo, runtime: Runtime | None) -> str:
    if info.metadata.get("runtime") == "kubernetes":  # its pod (and all it owns) goes, wherever it is
        from moat.run.kubereap import delete_pod  # noqa: PLC0415 — a Kubernetes run's only

        done = delete_pod(info, registry.store.home)
        reaper.settle_orphan(info)
        return f"{done}; its moat process was gone"
    if runtime is None:
        raise MoatError(f"{info.id} ({info.name}): its moat process is gone, and its {info.metadata.get('runtime')}"
                        " runtime is not available here to remove what it left",
                        hint="Start the engine, then run `moat clean`.")
    problems = reaper.remove(runtime, reaper.find(runtime, registry, finished=False, only_run=info.id))
    if problems:
        raise MoatError(f"{info.id} ({info.name}): its moat process is gone, and not everything it left could be"
                        " removed: " + "; ".join(problems), hint="Run `moat clean` once the engine answers.")
    return f"{info.id} ({info.name}): its moat process was gone; removed what it left"


def remove_engine_objects(runtime: Runtime, run_id: str) -> None:
    """Everything on the engine labelled with this run (e.g. an agent container kept with --keep)."""
    left = runtime.find_labelled({LABEL_RUN_ID: run_id})
    for container in left.containers:
        runtime.remove_container(container)
    for network in left.networks:
        runtime.remove_network(network)
    for volume in left.volumes:
        runtime.remove_volume(volume)
