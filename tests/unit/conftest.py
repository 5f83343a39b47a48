"""Shared fixtures for moat's unit tests (no engine, no network)."""

from __future__ import annotations

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
    """Nothing a test does may touch the real ~/.moat, and the host's MOAT_RUNTIME must not leak in."""
    home = tmp_path_factory.mktemp("moat-home")
    monkeypatch.setenv("MOAT_HOME", str(home))
    monkeypatch.delenv("MOAT_RUNTIME", raising=False)
    return home


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws
