"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from moat.catalog import load_catalog
from moat.errors import EngineError
from moat.runtime.sandbox import SandboxRuntime
from moat.runtime.sandbox.services import find_binary
from tests.conftest import IN_CI

SERVICE_PROGRAMS = {"postgres": ("initdb", "postgres", "psql"), "mysql": ("mariadb-install-db", "mariadbd", "mysql"),
                    "redis": ("redis-server", "redis-cli")}


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> SandboxRuntime:
    runtime = SandboxRuntime(tmp_path_factory.mktemp("sandbox-check"))
    try:
        runtime.ping()
        for name, programs in SERVICE_PROGRAMS.items():
            recipe = load_catalog().service(name).sandbox  # type: ignore[union-attr]
            assert recipe is not None
            for program in programs:
                find_binary(program, recipe)
    except EngineError as exc:  # what is missing, and how to install it
        if IN_CI:
            pytest.fail(f"CI=true and the sandbox tests cannot run: {exc.render()}; run `make sandbox`",
                        pytrace=False)
        pytest.skip(f"the sandbox runtime cannot run here ({exc.message}); run `make sandbox`")
    return runtime
