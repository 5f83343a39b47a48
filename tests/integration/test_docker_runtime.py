"""The Docker runtime against a real engine: each protocol operation, its typed results and errors."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.errors import EngineError
from moat.masking import Masker
from moat.plan.containers import ContainerSpec
from moat.plan.model import ProbeSpec, ServiceSpec
from moat.runtime.base import ContainerNotRunning, EngineGone, NotFound, ProgramNotFound
from moat.runtime.docker import DockerRuntime, _streamed
from moat.services.readiness import ReadinessError, wait_ready

pytestmark = pytest.mark.engine


@pytest.fixture
def scope(engine: DockerRuntime, tmp_path: Path) -> Iterator[tuple[DockerRuntime, str, dict[str, str]]]:
    """A private network and label set; everything carrying the label is removed afterwards."""
    run_id = f"run_test{uuid.uuid4().hex[:8]}"
    labels = {"moat.run-id": run_id, "moat.role": "test"}
    network = f"moat-{run_id}"
    engine.create_network(network, labels, str(tmp_path))
    yield engine, network, labels
    left = engine.find_labelled({"moat.run-id": run_id})
    for container in left.containers:
        engine.remove_container(container)
    for name in left.networks:
        engine.remove_network(name)
    assert engine.find_labelled({"moat.run-id": run_id}).networks == []


def spec(network: str, labels: dict[str, str], name: str, **extra: object) -> ContainerSpec:
    values: dict[str, object] = {"role": "service", "service": "redis", "name": name,
                                 "image": "moat-test/redis:latest", "labels": labels, "network": network,
                                 "command": ("redis-server", "--requirepass", "s3cret"), "hostname": "redis",
                                 "aliases": ("redis",)}
    return ContainerSpec(**{**values, **extra})  # type: ignore[arg-type]


def test_container_lifecycle_exec_logs_and_removal(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    name = f"moat-redis-{labels['moat.run-id']}"
    cid = runtime.create_container(spec(network, labels, name, memory_mb=64), {"moat.owner-pid": "1"})
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
    assert cid in runtime.find_labelled({**labels, "moat.owner-pid": "1"}).containers
    runtime.remove_container(cid)
    runtime.remove_container(cid)  # removing twice is not an error
    assert runtime.find_labelled(labels).containers == []
    with pytest.raises(NotFound):
        runtime.state(cid)


def test_an_agent_container_is_confined_as_planned(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(spec(network, labels, f"moat-a-{labels['moat.run-id']}", role="agent",
                                        image="debian:bookworm-slim", service=None, user="0:0", cap_drop=("ALL",),
                                        no_new_privileges=True,
                                        command=("sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")),
                                   {})
    runtime.start_container(cid)
    assert runtime.wait(cid) == 0
    status = dict(line.split(":\t") for line in runtime.logs(cid).splitlines())
    assert status == {"CapEff": "0000000000000000", "NoNewPrivs": "1"}


def test_exec_in_a_stopped_container_and_of_a_missing_program_say_so(
        scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(spec(network, labels, f"moat-x-{labels['moat.run-id']}",
                                        image="debian:bookworm-slim", command=("sleep", "30")), {})
    runtime.start_container(cid)
    with pytest.raises(ProgramNotFound) as missing:
        runtime.exec(cid, ("no-such-program", "x"), {})
    assert missing.value.program == "no-such-program"
    runtime.signal(cid, 9)
    assert runtime.wait(cid) == 137
    state = runtime.state(cid)
    assert (state.running, state.exit_code) == (False, 137)
    with pytest.raises(ContainerNotRunning):
        runtime.exec(cid, ("true",), {})
    runtime.signal(cid, 15)  # signalling a stopped container is not an error


def test_removal_takes_anonymous_volumes_with_it(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(spec(network, labels, f"moat-v-{labels['moat.run-id']}"), {})
    mounts = runtime.api.inspect_container(cid)["Mounts"]
    volumes = [m["Name"] for m in mounts if m.get("Type") == "volume"]
    assert volumes, "the redis image declares a data volume"
    runtime.remove_container(cid)
    remaining = {v["Name"] for v in runtime.api.volumes().get("Volumes") or []}
    assert not set(volumes) & remaining


def test_follow_logs_and_container_env(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    cid = runtime.create_container(spec(network, labels, f"moat-f-{labels['moat.run-id']}",
                                        image="debian:bookworm-slim", env={"MYSQL_PASSWORD": "pw-1"},
                                        command=("sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done")), {})
    runtime.start_container(cid)
    lines = list(runtime.follow_logs(cid))
    assert [line.split(" ", 1)[1] for line in lines] == ["line 1", "line 2", "line 3"]  # timestamped
    assert runtime.container_env(cid)["MYSQL_PASSWORD"] == "pw-1"


def test_readiness_waits_for_an_authenticated_answer(scope: tuple[DockerRuntime, str, dict[str, str]]) -> None:
    runtime, network, labels = scope
    container = spec(network, labels, f"moat-r-{labels['moat.run-id']}")
    cid = runtime.create_container(container, {})
    runtime.start_container(cid)

    def service(password: str, timeout: float) -> ServiceSpec:
        probe = ProbeSpec(("redis-cli", "-h", "redis", "PING"), {"REDISCLI_AUTH": password}, "PONG")
        return ServiceSpec(name="redis", version="7", image="moat-test/redis:latest", image_overridden=True,
                           port=6379, container=container, probe=probe, wait=True, ready_timeout=timeout,
                           cache_path=None, hand_back_cache=False, provision=None, agent_env={})

    ready = wait_ready(runtime, cid, service("s3cret", 30), network, threading.Event(), Masker())
    assert ready.seconds < 30 and ready.probes >= 1
    # The wrong password never counts as ready, and the error masks what it must.
    with pytest.raises(ReadinessError) as caught:
        wait_ready(runtime, cid, service("wrong", 1), network, threading.Event(), Masker({"wrong"}))
    assert "redis was not ready after" in caught.value.message
    assert "WRONGPASS" in caught.value.message and "wrong" not in caught.value.message.replace("WRONGPASS", "")


def test_unreachable_engine_is_an_engine_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineError) as caught:
        DockerRuntime().ping()
    assert "no container engine answers" in caught.value.message
    assert caught.value.hint and "DOCKER_HOST" in caught.value.hint


def test_a_stream_that_breaks_is_translated_where_it_is_read() -> None:
    import requests

    def broken() -> Iterator[bytes]:
        yield b"one"
        raise requests.exceptions.ConnectionError("Connection aborted: the engine went away")

    stream = _streamed(broken(), "reading the agent's output")
    assert next(stream) == b"one"
    with pytest.raises(EngineGone) as caught:
        next(stream)
    assert "stopped answering" in caught.value.message and "moat clean" in (caught.value.hint or "")
