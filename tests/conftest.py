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
def moat_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path / "moat-home"
    monkeypatch.setenv("MOAT_HOME", str(home))
    # Every test's runs share the services' warm templates, as one user's runs do: each is made once
    # per session, not once per test (tests of the templates themselves set one of their own).
    monkeypatch.setenv("MOAT_WARM_CACHE", str(tmp_path_factory.getbasetemp() / "warm-cache"))
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
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    problem = _engine_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and the engine tests cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    from moat.runtime.docker import DockerRuntime

    runtime = DockerRuntime()
    volumes_before = _volumes(runtime)
    yield runtime
    # The whole suite must leave nothing behind: nothing labelled by moat for one of the suite's own
    # MOAT_HOMEs (another moat on this engine is none of its business), and no new volumes (sidecars'
    # anonymous volumes carry no labels, so they are compared with the start).
    ours = _homes(tmp_path_factory.getbasetemp())
    left = [o for o in runtime.objects_with_label("moat.run-id") if o.labels.get("moat.home", "") in ours]
    new_volumes = sorted(_volumes(runtime) - volumes_before)
    leftovers = [*(o.id for o in left), *new_volumes]
    for obj in sorted(left, key=lambda o: o.kind != "container"):  # containers before their networks
        (runtime.remove_container if obj.kind == "container" else runtime.remove_network)(obj.id)
    assert not leftovers, f"moat-labelled objects left on the engine: {leftovers}"


SCRATCH_ROOT = Path("/tmp")  # moat's default place for a run's private directories


def _scratch_dirs() -> set[str]:
    return {p.name for p in SCRATCH_ROOT.glob("moat-run_*")}


@pytest.fixture(autouse=True)
def no_scratch_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A run removes its private directory under /tmp (``moat-<run id>``) when it ends: an engine
    test whose runs leave one fails, naming it (unit tests plan into their own tmp_path)."""
    if "unit" in request.node.path.parts:
        yield
        return
    before = _scratch_dirs()
    yield
    left = sorted(_scratch_dirs() - before)
    assert not left, f"run scratch directories left in {SCRATCH_ROOT}: {left}"


def _homes(base: Path) -> set[str]:
    """The ids (``moat.home`` labels) of every MOAT_HOME the suite's tests made, and the empty id of
    objects that carry none."""
    from moat.ownership import home_id

    return {"", *(home_id(runs.parent) for runs in base.rglob("runs") if runs.is_dir())}


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
