"""Fixtures for every test tier.

Engine tests: under CI=true they must run, so a missing engine fails them loudly; elsewhere they are
skipped with the reason (run `make engine`). After the engine tests, nothing labelled by moat may be
left on the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import SERVICE_IMAGES, localize_example

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def moat_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "moat-home"
    monkeypatch.setenv("MOAT_HOME", str(home))
    return home


def _engine_problem() -> str | None:
    from moat.errors import EngineError
    from moat.runtime.docker import DockerRuntime

    try:
        runtime = DockerRuntime()
        runtime.ping()
    except EngineError as exc:  # only "no engine here" skips; any other failure is a failure
        return f"no container engine answers ({exc.message}); run `make engine`"
    missing = [image for image in SERVICE_IMAGES.values() if not runtime.image_exists(image)]
    if missing:
        return f"test images missing: {', '.join(missing)}; run `make engine`"
    return None


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    problem = _engine_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and the engine tests cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    from moat.runtime.docker import DockerRuntime

    runtime = DockerRuntime()
    volumes_before = _volumes(runtime)
    yield runtime
    # The whole suite must leave nothing behind: nothing labelled by moat, and no new volumes
    # (sidecars' anonymous volumes carry no labels, so they are compared with the start).
    left = runtime.find_labelled({"moat.run-id": ""})
    new_volumes = sorted(_volumes(runtime) - volumes_before)
    leftovers = [*left.containers, *left.networks, *left.volumes, *new_volumes]
    for container in left.containers:
        runtime.remove_container(container)
    for network in left.networks:
        runtime.remove_network(network)
    assert not leftovers, f"moat-labelled objects left on the engine: {leftovers}"


def skip_or_fail(reason: str) -> None:
    """Outside CI a missing piece skips; under CI=true nothing skips: it fails, saying what is missing."""
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def example(tmp_path: Path) -> Callable[[str], Path]:
    """``example("service-postgres")`` → a copy of that example using the local test images."""
    return lambda name: localize_example(name, tmp_path / "ws" / name)


def _volumes(runtime: object) -> set[str]:
    return {v["Name"] for v in (runtime.api.volumes().get("Volumes") or [])}  # type: ignore[attr-defined]
