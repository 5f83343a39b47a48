"""Readiness lag: how long after a service first answers does moat notice it?

While a ``moat run`` starts, a watcher polls each of its sidecars from the host every 5 ms with a
protocol-level check; the lag is moat's "ready" event time minus the first time the service answered.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
from benchmarks.common import answers

from moat.ownership import home_id

POLL = 0.005


class Watcher:
    def __init__(self, client: Any, home: Path) -> None:
        self.client = client
        self.home = home
        self.first: dict[str, float] = {}  # service → wall time it first answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        """Find each sidecar as it appears; then one thread per service polls it tightly."""
        ports = {"postgres": 5432, "mysql": 3306, "redis": 6379}
        pollers: dict[str, threading.Thread] = {}
        while not self._stop.is_set() and len(pollers) < len(ports):
            for container in self._services():
                name = container["Labels"].get("moat.service")
                if name in ports and name not in pollers:
                    address = self._address(container["Id"])
                    if address:
                        pollers[name] = threading.Thread(target=self._poll, args=(name, address, ports[name]),
                                                         daemon=True)
                        pollers[name].start()
            time.sleep(POLL)
        for poller in pollers.values():
            poller.join()

    def _services(self) -> list[dict[str, Any]]:
        """This benchmark's sidecars only: other runs on the same engine are not its business."""
        labels = ["moat.role=service", f"moat.home={home_id(self.home)}"]
        return list(self.client.api.containers(filters={"label": labels}))

    def _address(self, container_id: str) -> str | None:
        """The sidecar's address; in a pod, its holder's (the container whose namespace it joined)."""
        try:
            info = self.client.api.inspect_container(container_id)
            mode = info["HostConfig"].get("NetworkMode") or ""
            if mode.startswith("container:"):
                info = self.client.api.inspect_container(mode.split(":", 1)[1])
        except docker.errors.NotFound:  # gone already (the run ended): nothing to watch
            return None
        networks = info["NetworkSettings"]["Networks"]
        return next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None)

    def _poll(self, name: str, address: str, port: int) -> None:
        while not self._stop.is_set():
            if answers(name, address, port, timeout=0.05):
                self.first[name] = time.time()
                return
            time.sleep(POLL)


def lags(home: Path, first: dict[str, float]) -> dict[str, float]:
    """Seconds between each service answering and moat's "<name> ready" event, from logs.jsonl."""
    result = {}
    for log in home.glob("runs/*/logs.jsonl"):
        for line in log.read_text().splitlines():
            record: dict[str, Any] = json.loads(line)
            words = record["line"].split()
            if record["stream"] == "moat" and len(words) > 1 and words[1] == "ready" and words[0] in first:
                noticed = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
                result[words[0]] = noticed - first[words[0]]
    return result
