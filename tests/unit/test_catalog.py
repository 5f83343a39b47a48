"""The dependency catalog: runtimes, tools and services exactly as the specification lists them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moat.catalog import Runtime, Service, Tool, load_catalog
from moat.catalog.describe import all_summaries, details
from moat.catalog.model import CatalogData
from tests.unit.support import CATALOG


def test_catalog_is_loaded_once() -> None:
    assert load_catalog() is load_catalog()


def test_names_are_sorted_and_cover_every_kind() -> None:
    names = CATALOG.names()
    assert names == sorted(names)
    assert set(names) == {
        "python", "node", "go",
        "git", "curl", "jq", "make", "sqlite3", "bats", "psql", "mysql-client", "redis-cli",
        "postgres", "mysql", "redis", "ollama", "ministack",
    }
    assert CATALOG.service_names() == ["ministack", "mysql", "ollama", "postgres", "redis"]


@pytest.mark.parametrize(
    ("name", "versions", "default", "base_image"),
    [
        ("python", ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14"), "3.11", "python:{version}-slim"),
        ("node", ("18", "20", "22", "24"), "22", "node:{version}-slim"),
        ("go", (), "1.25", "golang:{version}"),  # no allow-list: any well-formed version
    ],
)
def test_runtimes(name: str, versions: tuple[str, ...], default: str, base_image: str) -> None:
    entry = CATALOG.get(name)
    assert isinstance(entry, Runtime)
    assert entry.versions == versions
    assert entry.default == default
    assert entry.base_image == base_image
    assert entry.install, "a runtime must say how to install it on a shared base"


@pytest.mark.parametrize(
    ("name", "apt"),
    [
        ("git", "git"),
        ("curl", "curl"),
        ("jq", "jq"),
        ("make", "make"),
        ("sqlite3", "sqlite3"),
        ("bats", "bats"),
        ("psql", "postgresql-client"),
        ("mysql-client", "default-mysql-client"),
        ("redis-cli", "redis-tools"),
    ],
)
def test_tools_map_to_debian_packages(name: str, apt: str) -> None:
    entry = CATALOG.get(name)
    assert isinstance(entry, Tool)
    assert entry.apt == apt


SERVICES = {
    # name: (image, versions, default, port, injected variables, url template)
    "postgres": ("postgres", ("15", "16", "17"), "17", 5432, ("HOST", "PORT", "USER", "DB", "PASSWORD", "URL"),
                 "postgresql://{user}:{password}@{host}:{port}/{db}"),
    "mysql": ("mysql", ("8", "9"), "8", 3306, ("HOST", "PORT", "USER", "DB", "PASSWORD", "URL"),
              "mysql://{user}:{password}@{host}:{port}/{db}"),
    "redis": ("redis", ("6", "7"), "7", 6379, ("HOST", "PORT", "PASSWORD", "URL"),
              "redis://default:{password}@{host}:{port}"),
    "ollama": ("ollama/ollama", ("0.16.3", "0.17.7", "0.18.0", "0.18.1"), "0.18.1", 11434,
               ("HOST", "PORT", "URL"), "http://{host}:{port}"),
    "ministack": ("ministackorg/ministack", (), "1.3", 4566, ("HOST", "PORT", "URL"), "http://{host}:{port}"),
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_services_table(name: str) -> None:
    image, versions, default, port, inject, url = SERVICES[name]
    entry = CATALOG.service(name)
    assert isinstance(entry, Service)
    assert entry.image == image
    assert entry.versions == versions
    assert entry.default == default
    assert entry.port == port
    assert set(entry.inject) == set(inject)
    assert entry.url == url
    assert entry.env_prefix == name.upper()


@pytest.mark.parametrize(("name", "authenticated"), [
    ("postgres", True), ("mysql", True), ("redis", True), ("ollama", False), ("ministack", False),
])
def test_only_authenticated_services_generate_a_password(name: str, authenticated: bool) -> None:
    entry = CATALOG.service(name)
    assert entry is not None
    generated = [k for k, c in entry.credentials.items() if c.generate]
    assert generated == (["password"] if authenticated else [])


def test_service_credential_defaults() -> None:
    postgres = CATALOG.service("postgres")
    mysql = CATALOG.service("mysql")
    redis = CATALOG.service("redis")
    assert postgres and mysql and redis
    assert postgres.credentials["user"].default == "postgres"
    assert postgres.credentials["user"].env == "POSTGRES_USER"
    assert postgres.credentials["db"].env == "POSTGRES_DB"
    assert postgres.credentials["password"].env == "POSTGRES_PASSWORD"
    assert mysql.credentials["user"].default == "root"
    assert mysql.credentials["db"].default == "moat"
    assert mysql.credentials["db"].env == "MYSQL_DATABASE"
    assert mysql.credentials["password"].env == "MYSQL_ROOT_PASSWORD"
    assert redis.credentials["password"].env == "REDIS_PASSWORD"


def test_ollama_provisions_models_with_ollama_pull() -> None:
    ollama = CATALOG.service("ollama")
    assert ollama is not None and ollama.provisions is not None
    assert ollama.provisions.key == "models"
    assert ollama.provisions.command == ("ollama", "pull", "{item}")
    assert ollama.provisions.cache_path == "/root/.ollama"
    for name in ("postgres", "mysql", "redis", "ministack"):
        entry = CATALOG.service(name)
        assert entry is not None and entry.provisions is None


@pytest.mark.parametrize(("name", "program"), [("postgres", "psql"), ("mysql", "mysql"), ("redis", "redis-cli")])
def test_readiness_probes_use_real_clients(name: str, program: str) -> None:
    entry = CATALOG.service(name)
    assert entry is not None
    assert entry.readiness.command[0] == program
    assert "{password}" not in " ".join(entry.readiness.command), "passwords go in the probe's env, not argv"
    assert any("{password}" in v for v in entry.readiness.env.values())


def test_dynamic_prefixes_require_their_runtime() -> None:
    pip = CATALOG.dynamic("pip")
    npm = CATALOG.dynamic("npm")
    assert pip is not None and pip.requires == "python"
    assert npm is not None and npm.requires == "node"
    assert CATALOG.dynamic("cargo") is None


def test_aliases_point_at_real_entries() -> None:
    assert CATALOG.alias_for("nodejs") == "node"
    assert CATALOG.alias_for("PostgreSQL") == "postgres"
    assert CATALOG.alias_for("golang") == "go"
    for wrong, right in CATALOG.data.aliases.items():
        assert CATALOG.get(right) is not None, (wrong, right)


def test_catalog_rejects_a_default_outside_its_versions() -> None:
    with pytest.raises(ValidationError, match="default"):
        Runtime(description="x", versions=("1", "2"), default="3", base_image="x:{version}", install=("RUN x",),
                binary="x", package="x")


def test_catalog_rejects_a_name_in_two_sections() -> None:
    data = CATALOG.data.model_dump()
    data["tools"]["postgres"] = {"description": "clash", "apt": "postgresql"}
    with pytest.raises(ValidationError, match="postgres"):
        CatalogData.model_validate(data)


def test_describe_details_for_a_service() -> None:
    entry = CATALOG.service("postgres")
    assert entry is not None
    data = details("postgres", entry)
    assert data["image"] == "postgres"
    assert data["port"] == 5432
    assert data["versions"] == ["15", "16", "17"]
    assert data["variables"] == [f"MOAT_POSTGRES_{v}" for v in ("HOST", "PORT", "USER", "DB", "PASSWORD", "URL")]
    assert data["provisions"] is None
    assert data["credentials"]["password"]["generated"] is True


def test_describe_lists_every_entry_and_prefix() -> None:
    rows = all_summaries(CATALOG)
    names = [r["name"] for r in rows]
    assert names == [*CATALOG.names(), "npm:", "pip:"]
    assert {r["type"] for r in rows} == {"runtime", "tool", "service", "dynamic"}
