"""Contenders written directly against the Docker SDK, in this process.

- the *floor*: every trick moat uses and nothing it cannot have — the three services started in
  parallel with their data in memory (tmpfs, as moat keeps it), polled every 25 ms with
  protocol-level checks from the host (TCP connect + handshake, no ``docker exec``), the agent's
  container created and started while they start, waiting on its stdin, and sent a line once they
  answer (moat's held agent): the fastest this job can be done here;
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

from benchmarks.common import SERVICES, Service, hold_agent, release_agent, run_agent, wait_answering

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


def _measure(client: Any, bring_up: Callable[[Any, str, str], None], hold: bool = False) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:10]
    started = time.monotonic()
    network = client.networks.create(f"bench-{suffix}", driver="bridge")
    holding: threading.Thread | None = None
    held: list[Any] = []
    failed: list[BaseException] = []
    try:
        if hold:  # as moat: the agent created and started while the services start, waiting its turn

            def start_held() -> None:
                try:
                    held.extend(hold_agent(client, network.name, name=f"bench-agent-{suffix}",
                                           labels={"moat-bench": suffix}))
                except BaseException as exc:  # re-raised below: a floor that silently got slower lies
                    failed.append(exc)

            holding = threading.Thread(target=start_held)
            holding.start()
        bring_up(client, network.name, suffix)
        ready = time.monotonic() - started
        if holding is not None:
            holding.join()
            holding = None
            if failed:
                raise failed[0]
            first = release_agent(held[0], held[1], started)
        else:
            first = run_agent(client, started, network.name, name=f"bench-agent-{suffix}",
                              labels={"moat-bench": suffix})
    finally:
        if holding is not None:
            holding.join()  # a creation under way lands before the cleanup looks for it
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
    return _measure(client, lambda c, n, s: _parallel_up(c, n, s, memory=True), hold=True)


def disk_floor(client: Any) -> dict[str, float]:
    return _measure(client, lambda c, n, s: _parallel_up(c, n, s, memory=False))


def reference(client: Any) -> dict[str, float]:
    return _measure(client, _reference_up)
