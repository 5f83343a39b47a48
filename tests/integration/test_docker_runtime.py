"""The Docker runtime against a real engine: each protocol operation, and its errors."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from moat.errors import EngineError
from moat.plan.model import Masker, ProbeSpec, ServiceSpec
from moat.runtime.base import ContainerNotRunning, ContainerSpec
from moat.runtime.docker import DockerRuntime
from moat.services.readiness import ReadinessError, wait_ready

pytestmark = pytest.mark.engine


@pytest.fixture
def scope(engine: DockerRuntime) -> Iterator[tuple[DockerRuntime, str, dict[str, str]]]:
    """A private network and label set; everything carrying the label is removed afterwards."""
    run_id = f"run_test{uuid.uuid4().hex[:8]}"
    labels = {"moat.run-id": run_id, "moat.role": "test"}
    network = f"moat-{run_id}"
    engine.create_network(network, labels)
    yield engine, network, labels
    left = engine.find_labelled({"moat.run-id": run_id})
    for container in left.containers:
        engine.remove_container(container)
    for name in left.networks:
        engine.remove_network(name)
    assert engine.find_labelled({"moat.run-id": run_id}).networks == []


def redis_spec(network: str, labels: dict[str, str], name: str, **extra: object) -> ContainerSpec:
    return ContainerSpec(name=name, image="moat-test/redis:latest", labels=labels, network=network,
                         command=("redis-server", "--requirepass", "s3cret"), hostname="redis",
                         aliases=("redis",), **extra)  # type: ignore[arg-type]


def test_container_lifecycle_exec_logs_and_removal(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    name = f"moat-redis-{labels['moat.run-id']}"
    cid = runtime.create_container(redis_spec(network, labels, name, memory_mb=64))
    assert runtime.state(cid).status == "created"
    runtime.start_container(cid)
    assert runtime.state(cid).running
    assert runtime.container_address(cid, network)
    # Secrets travel in the exec environment, not on the command line.
    ok = runtime.exec(cid, ("sh", "-c", 'redis-cli -a "$PW" --no-auth-warning ping'), {"PW": "s3cret"})
    assert (ok.exit_code, ok.output.strip()) == (0, "PONG")
    failed = runtime.exec(cid, ("sh", "-c", "exit 3"), {})
    assert failed.exit_code == 3
    assert "Ready to accept connections" in runtime.logs(cid, tail=50)
    assert cid in runtime.find_labelled(labels).containers
    runtime.remove_container(cid)
    runtime.remove_container(cid)  # removing twice is not an error
    assert runtime.find_labelled(labels).containers == []


def test_exec_in_a_stopped_container_says_so(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(ContainerSpec(
        name=f"moat-x-{labels['moat.run-id']}", image="debian:bookworm-slim", labels=labels, network=network,
        command=("sh", "-c", "exit 4")))
    runtime.start_container(cid)
    assert runtime.wait(cid) == 4
    state = runtime.state(cid)
    assert (state.running, state.exit_code) == (False, 4)
    with pytest.raises(ContainerNotRunning):
        runtime.exec(cid, ("true",), {})


def test_removal_takes_anonymous_volumes_with_it(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(redis_spec(network, labels, f"moat-v-{labels['moat.run-id']}"))
    mounts = runtime.api.inspect_container(cid)["Mounts"]
    volumes = [m["Name"] for m in mounts if m.get("Type") == "volume"]
    assert volumes, "the redis image declares a data volume"
    runtime.remove_container(cid)
    remaining = {v["Name"] for v in runtime.api.volumes().get("Volumes") or []}
    assert not set(volumes) & remaining


def test_readiness_waits_for_an_authenticated_answer(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(redis_spec(network, labels, f"moat-r-{labels['moat.run-id']}"))
    runtime.start_container(cid)

    def service(password: str, timeout: float) -> ServiceSpec:
        probe = ProbeSpec(("redis-cli", "-h", "redis", "PING"), {"REDISCLI_AUTH": password}, "PONG")
        return ServiceSpec(name="redis", version="7", image="moat-test/redis:latest", image_overridden=True,
                           container_name="x", port=6379, env={}, command=None, probe=probe, wait=True,
                           ready_timeout=timeout, memory_mb=None, tmpfs=(), cache_path=None, provision=None,
                           agent_env={})

    ready = wait_ready(runtime, cid, service("s3cret", 30), network, threading.Event(), Masker(frozenset()))
    assert ready.seconds < 30 and ready.probes >= 1
    # The wrong password never counts as ready, and the error masks what it must.
    with pytest.raises(ReadinessError) as caught:
        wait_ready(runtime, cid, service("wrong", 1), network, threading.Event(), Masker(frozenset({"wrong"})))
    assert "redis was not ready after" in caught.value.message
    assert "WRONGPASS" in caught.value.message and "wrong" not in caught.value.message.replace("WRONGPASS", "")


def test_unreachable_engine_is_an_engine_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineError) as caught:
        DockerRuntime().ping()
    assert "no container engine answers" in caught.value.message
    assert caught.value.hint and "DOCKER_HOST" in caught.value.hint
