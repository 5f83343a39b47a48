"""Shared fixtures for moat's unit tests (no engine, no network)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from moat.catalog import Catalog, load_catalog

# Hypothesis writes caches (even with database=None) as soon as tests are collected, so this is set
# when the conftest loads, not in a fixture: nothing lands in the repository's .hypothesis.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moat-unit-hypothesis")


@pytest.fixture(autouse=True)
def _isolated_moat_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing a test does may touch the real ~/.moat, and the host's MOAT_RUNTIME must not leak in.

    MOAT_RUNTIME is docker, so that the CLI plans without asking whether an engine answers."""
    home = tmp_path_factory.mktemp("moat-home")
    monkeypatch.setenv("MOAT_HOME", str(home))
    monkeypatch.setenv("MOAT_RUNTIME", "docker")
    return home


class EngineTouched(AssertionError):
    """A unit test reached for a container engine."""


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tier never touches an engine: no Unix socket connection (the Docker socket), no
    automatic runtime choice (which pings one). A test that means to exercise the choice patches
    ``docker_answers`` itself."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_UNIX:
            raise EngineTouched(f"a unit test connected to the Unix socket {address!r}")
        real_connect(self, address)  # type: ignore[arg-type]

    def no_ping() -> bool:
        raise EngineTouched("a unit test asked whether a container engine answers; pass --runtime")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr("moat.runtime.select.docker_answers", no_ping)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws
