"""A run's containers as a "pod" against today's per-run bridge network, on the local Docker engine.

    python benchmarks/pod_start.py [--rounds N] [--json FILE] [--variants bridge,pod,...]

Six ways to bring up two sidecars and an agent (``debian:bookworm-slim``, ``sleep 300``), with the
low-level Docker SDK, in one process, after a warm-up of each, in rotating order for N rounds:

- ``bridge``: a user-defined bridge network (``driver="bridge"``), then each container created (its
  name as hostname and network alias) and started, one after another — what moat does today;
- ``pod``: a holder container with ``--network none`` created and started, then each container
  created with ``network_mode="container:<holder>"`` and started, one after another;
- ``pod-bridge``: a user-defined bridge network, then a holder created attached to it (the network
  and nothing else) and started, then the containers join the holder as for ``pod`` — a per-run
  network keeps runs apart while a run's containers share one namespace (moat's permissive runs);
- ``bridge-parallel`` / ``pod-parallel`` / ``pod-bridge-parallel``: the network and / or holder first,
  then the three containers created and started in parallel threads (and removed in parallel).

"start" runs from the first API call to the last container started; "teardown" from then until the
containers (force) and then the holder and / or network are removed; "base" is the share of "start"
taken by the network and / or holder. Prints medians, min/max and the ratios pod/bridge,
pod-bridge/bridge and their parallel counterparts (these machines are noisy: compare ratios).
Everything is labelled ``moat.benchmark=pod_start`` and removed even on Ctrl-C; a final sweep
removes whatever carries that label. Start the engine with ``make engine``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import docker

IMAGE = "debian:bookworm-slim"
COMMAND = ["sleep", "300"]
LABEL_KEY = "moat.benchmark"
LABEL_VALUE = "pod_start"
MEMBERS = ("sidecar1", "sidecar2", "agent")
VARIANTS = ("bridge", "pod", "pod-bridge", "bridge-parallel", "pod-parallel", "pod-bridge-parallel")
MEASURES = ("start", "teardown", "total", "base")
RATIOS = (
    ("pod", "bridge"),
    ("pod-bridge", "bridge"),
    ("pod-parallel", "bridge-parallel"),
    ("pod-bridge-parallel", "bridge-parallel"),
)


class Round:
    """One bring-up and teardown; remembers everything it created so that it can always clean up."""

    def __init__(self, api: Any, variant: str) -> None:
        self.api = api
        self.parallel = variant.endswith("-parallel")
        self.pod = variant.startswith("pod")
        self.bridged = not self.pod or variant.startswith("pod-bridge")  # a per-run network first
        self.suffix = uuid.uuid4().hex[:10]
        self.labels = {LABEL_KEY: LABEL_VALUE, f"{LABEL_KEY}.round": self.suffix}
        self.network: str | None = None
        self.holder: str | None = None
        self.members: list[str] = []

    def name(self, role: str) -> str:
        return f"pod-start-{self.suffix}-{role}"

    def _base(self) -> None:
        if self.bridged:
            network = self.name("net")
            self.api.create_network(network, driver="bridge", labels=self.labels, check_duplicate=True)
            self.network = network
        if self.pod:
            created = self.api.create_container(
                IMAGE, COMMAND, name=self.name("holder"), labels=self.labels,
                host_config=self.api.create_host_config(network_mode=self.network or "none"))
            self.holder = str(created["Id"])
            self.api.start(self.holder)

    def _member(self, role: str) -> None:
        api = self.api
        if self.holder is not None:
            created = api.create_container(
                IMAGE, COMMAND, name=self.name(role), labels=self.labels,
                host_config=api.create_host_config(network_mode=f"container:{self.holder}"))
        else:
            created = api.create_container(
                IMAGE, COMMAND, name=self.name(role), hostname=role, labels=self.labels,
                host_config=api.create_host_config(network_mode=self.network),
                networking_config=api.create_networking_config(
                    {self.network: api.create_endpoint_config(aliases=[role])}))
        self.members.append(str(created["Id"]))  # list.append is atomic: threads may share the list
        api.start(created["Id"])

    def _remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container_id, force=True, v=True)

    def up(self) -> tuple[float, float]:
        """Bring the containers up; the seconds taken by the network and / or holder and by everything."""
        started = time.perf_counter()
        self._base()
        base = time.perf_counter() - started
        if self.parallel:
            with ThreadPoolExecutor(len(MEMBERS)) as pool:  # leaving the block waits for every thread
                for future in [pool.submit(self._member, role) for role in MEMBERS]:
                    future.result()
        else:
            for role in MEMBERS:
                self._member(role)
        return base, time.perf_counter() - started

    def down(self) -> float:
        """Remove the containers, then the holder, then the network; the seconds taken."""
        started = time.perf_counter()
        members, self.members = list(reversed(self.members)), []
        if self.parallel:
            with ThreadPoolExecutor(max(1, len(members))) as pool:
                list(pool.map(self._remove, members))
        else:
            for container_id in members:
                self._remove(container_id)
        if self.holder is not None:
            self._remove(self.holder)
            self.holder = None
        if self.network is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_network(self.network)
            self.network = None
        return time.perf_counter() - started


def measure(api: Any, variant: str) -> dict[str, float]:
    one = Round(api, variant)
    try:
        base, start = one.up()
        teardown = one.down()
    finally:
        sweep(api, one.suffix)  # after a failure (or Ctrl-C) part-way: whatever this round left
    return {"start": start, "teardown": teardown, "total": start + teardown, "base": base}


def sweep(api: Any, suffix: str | None = None) -> int:
    """Remove every container, then every network, labelled by this benchmark (or by one round)."""
    label = f"{LABEL_KEY}.round={suffix}" if suffix else f"{LABEL_KEY}={LABEL_VALUE}"
    removed = 0
    containers = api.containers(all=True, filters={"label": label})
    holders = [c for c in containers if c["Names"] and c["Names"][0].endswith("-holder")]
    for container in [c for c in containers if c not in holders] + holders:  # joined ones before holders
        try:
            api.remove_container(container["Id"], force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass
    for network in api.networks(filters={"label": label}):
        try:
            api.remove_network(network["Id"])
            removed += 1
        except docker.errors.NotFound:
            pass
    return removed


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that SIGTERM, too, runs the clean-up in the finally blocks


def run(api: Any, variants: tuple[str, ...], rounds: int) -> dict[str, list[dict[str, float]]]:
    for variant in variants:  # warm-up: page cache, the engine's first-use costs
        measure(api, variant)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for index in range(rounds):
        shift = index % len(variants)
        for variant in variants[shift:] + variants[:shift]:  # rotating order
            results[variant].append(measure(api, variant))
    return results


def report(results: dict[str, list[dict[str, float]]], rounds: int) -> dict[str, Any]:
    medians = {v: {m: statistics.median(r[m] for r in rs) for m in MEASURES} for v, rs in results.items()}
    print(f"3 containers ({IMAGE}, {' '.join(COMMAND)}), {rounds} rounds each after a warm-up (seconds)")
    print(f"{'variant':<20} {'start':>7} {'teardown':>9} {'total':>7} {'base':>7} {'start min':>10} {'start max':>10}")
    for variant, runs in results.items():
        m = medians[variant]
        starts = [r["start"] for r in runs]
        print(f"{variant:<20} {m['start']:7.3f} {m['teardown']:9.3f} {m['total']:7.3f} {m['base']:7.3f}"
              f" {min(starts):10.3f} {max(starts):10.3f}")
    ratios: dict[str, dict[str, float]] = {}
    for pod, bridge in RATIOS:
        if pod in medians and bridge in medians:
            key = f"{pod}/{bridge}"
            ratios[key] = {m: medians[pod][m] / medians[bridge][m] for m in MEASURES}
    if ratios:
        print()
        print(f"{'ratio (medians)':<36} {'start':>7} {'teardown':>9} {'total':>7} {'base':>7}")
        for key, values in ratios.items():
            print(f"{key:<36} {values['start']:7.2f} {values['teardown']:9.2f} {values['total']:7.2f}"
                  f" {values['base']:7.2f}")
    return {"rounds": rounds, "image": IMAGE, "medians_seconds": medians, "ratios": ratios, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    variants = tuple(args.variants.split(","))
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    try:
        api = docker.from_env().api
        api.ping()
    except docker.errors.DockerException as error:
        sys.exit(f"no Docker engine answers ({error}); start one with `make engine`")
    try:
        api.inspect_image(IMAGE)
    except docker.errors.ImageNotFound:
        sys.exit(f"image {IMAGE} is missing; build it with `make engine`")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = run(api, variants, args.rounds)
    except KeyboardInterrupt:
        sys.exit("interrupted")
    finally:
        if left := sweep(api):
            print(f"swept {left} leftover objects labelled {LABEL_KEY}={LABEL_VALUE}", file=sys.stderr)
    payload = report(results, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
