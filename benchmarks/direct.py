"""Contenders written directly against the Docker SDK, in this process.

- the *floor*: every trick moat uses and nothing it cannot have — the three services started in
  parallel with their data in memory (tmpfs, as moat keeps it), polled every 25 ms with
  protocol-level checks from the host (TCP connect + handshake, no ``docker exec``), the agent's
  container created while they start, started once they answer: the fastest this job can be done
  here;
- the *disk floor*: the same with the services' data on disk and the agent created at the end (the
  floor this benchmark used before);
- the *reference algorithm* of the Go tool: services started and waited one after another with an
  exec probe every second, then the agent.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.common import SERVICES, Service, create_agent, run_agent, wait_answering

FLOOR_INTERVAL = 0.025
REFERENCE_INTERVAL = 1.0
TIMEOUT = 120.0


def _start_service(client: Any, service: Service, network: str, suffix: str, memory: bool = False) -> Any:
    return client.containers.run(service.image, list(service.command) if service.command else None,
                                 name=f"bench-{service.name}-{suffix}", network=network, hostname=service.name,
                                 environment=service.env, detach=True, labels={"moat-bench": suffix},
                                 tmpfs=dict.fromkeys(service.data_paths, "rw") if memory else None)


def _address(container: Any, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def _cleanup(client: Any, suffix: str, network: Any) -> None:
    for container in client.containers.list(all=True, filters={"label": f"moat-bench={suffix}"}):
        container.remove(force=True, v=True)
    network.remove()


def _measure(client: Any, bring_up: Callable[[Any, str, str], None], precreate: bool = False) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:10]
    started = time.monotonic()
    network = client.networks.create(f"bench-{suffix}", driver="bridge")
    agent: Any = None
    try:
        creating = None
        if precreate:  # off the critical path, as moat holds its agent container while services start
            made: list[Any] = []
            creating = threading.Thread(target=lambda: made.append(create_agent(
                client, network.name, name=f"bench-agent-{suffix}", labels={"moat-bench": suffix})))
            creating.start()
        bring_up(client, network.name, suffix)
        ready = time.monotonic() - started
        if creating is not None:
            creating.join()
            agent = made[0] if made else None
        first = run_agent(client, started, network.name, agent=agent, name=f"bench-agent-{suffix}",
                          labels={"moat-bench": suffix})
    finally:
        _cleanup(client, suffix, network)
    return {"ready": ready, "first_output": first, "total": time.monotonic() - started}


def _parallel_up(client: Any, network: str, suffix: str, memory: bool) -> None:
    errors: list[BaseException] = []

    def one(service: Service) -> None:
        try:
            container = _start_service(client, service, network, suffix, memory)
            wait_answering(service.name, _address(container, network), service.port, FLOOR_INTERVAL,
                           time.monotonic() + TIMEOUT)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in SERVICES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _reference_up(client: Any, network: str, suffix: str) -> None:
    for service in SERVICES:
        container = _start_service(client, service, network, suffix)
        deadline = time.monotonic() + TIMEOUT
        while container.exec_run(list(service.exec_probe)).exit_code != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service.name} was not ready")
            time.sleep(REFERENCE_INTERVAL)


def floor(client: Any) -> dict[str, float]:
    return _measure(client, lambda c, n, s: _parallel_up(c, n, s, memory=True), precreate=True)


def disk_floor(client: Any) -> dict[str, float]:
    return _measure(client, lambda c, n, s: _parallel_up(c, n, s, memory=False))


def reference(client: Any) -> dict[str, float]:
    return _measure(client, _reference_up)
