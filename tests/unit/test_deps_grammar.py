"""The ``name[@version]`` grammar: parsing, allow-lists, suggestions, injection, and list resolution."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moat.catalog import DepType
from moat.catalog.deps import (
    Dependency,
    DependencyError,
    parse_dependency,
    quote_packages,
    resolve_dependencies,
)
from moat.errors import EXIT_USAGE, MoatError
from tests.unit.support import CATALOG


def parse(text: object) -> Dependency:
    return parse_dependency(text, CATALOG)


def error(text: object) -> str:
    with pytest.raises(DependencyError) as info:
        parse_dependency(text, CATALOG)
    assert isinstance(info.value, MoatError)
    assert info.value.exit_code == EXIT_USAGE
    return info.value.message


@pytest.mark.parametrize(
    ("text", "name", "kind", "version", "requested", "manager"),
    [
        ("python", "python", DepType.RUNTIME, "3.11", None, None),
        ("python@3.10", "python", DepType.RUNTIME, "3.10", "3.10", None),
        ("python@3.14", "python", DepType.RUNTIME, "3.14", "3.14", None),
        ("node", "node", DepType.RUNTIME, "22", None, None),
        ("node@18", "node", DepType.RUNTIME, "18", "18", None),
        ("node@24", "node", DepType.RUNTIME, "24", "24", None),
        ("go", "go", DepType.RUNTIME, "1.25", None, None),
        ("go@1.22.3", "go", DepType.RUNTIME, "1.22.3", "1.22.3", None),
        ("go@1.26rc1", "go", DepType.RUNTIME, "1.26rc1", "1.26rc1", None),
        ("git", "git", DepType.TOOL, None, None, None),
        ("mysql-client", "mysql-client", DepType.TOOL, None, None, None),
        ("postgres", "postgres", DepType.SERVICE, "17", None, None),
        ("postgres@15", "postgres", DepType.SERVICE, "15", "15", None),
        ("mysql", "mysql", DepType.SERVICE, "8", None, None),
        ("mysql@9", "mysql", DepType.SERVICE, "9", "9", None),
        ("redis", "redis", DepType.SERVICE, "7", None, None),
        ("redis@6", "redis", DepType.SERVICE, "6", "6", None),
        ("ollama", "ollama", DepType.SERVICE, "0.18.1", None, None),
        ("ollama@0.16.3", "ollama", DepType.SERVICE, "0.16.3", "0.16.3", None),
        ("ministack", "ministack", DepType.SERVICE, "1.3", None, None),
        ("ministack@2.0.1-beta_1", "ministack", DepType.SERVICE, "2.0.1-beta_1", "2.0.1-beta_1", None),
        ("pip:requests", "requests", DepType.DYNAMIC, None, None, "pip"),
        ("pip:requests@2.32.3", "requests", DepType.DYNAMIC, "2.32.3", "2.32.3", "pip"),
        ("pip:uvicorn[standard]@0.30", "uvicorn[standard]", DepType.DYNAMIC, "0.30", "0.30", "pip"),
        ("npm:typescript@5", "typescript", DepType.DYNAMIC, "5", "5", "npm"),
        ("npm:@scope/pkg@1.2", "@scope/pkg", DepType.DYNAMIC, "1.2", "1.2", "npm"),
        ("npm:@scope/pkg", "@scope/pkg", DepType.DYNAMIC, None, None, "npm"),
    ],
)
def test_valid_dependencies(text: str, name: str, kind: DepType, version: str | None,
                            requested: str | None, manager: str | None) -> None:
    dep = parse(text)
    assert (dep.name, dep.type, dep.version, dep.requested, dep.manager) == (name, kind, version, requested, manager)


def test_canonical_spec_and_key() -> None:
    assert parse("postgres").spec == "postgres@17"
    assert parse("git").spec == "git"
    assert parse("npm:@scope/pkg@1.2").spec == "npm:@scope/pkg@1.2"
    assert parse("npm:@scope/pkg@1.2").key == "npm:@scope/pkg"
    # A package never collides with a catalog entry of the same name.
    assert parse("pip:redis").key != parse("redis").key


def test_allow_list_error_text() -> None:
    assert error("postgres@14") == (
        "invalid version '14' for postgres — available: 15, 16, 17; omit the version for the default, 17"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("python@3.8", "available: 3.9, 3.10, 3.11, 3.12, 3.13, 3.14; omit the version for the default, 3.11"),
        ("python@3.1", "invalid version '3.1' for python"),
        ("node@16", "available: 18, 20, 22, 24; omit the version for the default, 22"),
        ("mysql@5.7", "available: 8, 9; omit the version for the default, 8"),
        ("redis@5", "available: 6, 7; omit the version for the default, 7"),
        ("ollama@latest", "available: 0.16.3, 0.17.7, 0.18.0, 0.18.1; omit the version for the default, 0.18.1"),
    ],
)
def test_versions_outside_the_allow_list(text: str, fragment: str) -> None:
    assert fragment in error(text)


def test_tools_take_no_version() -> None:
    message = error("git@2.40")
    assert "takes no version" in message
    assert "'git'" in message


INJECTIONS = ["1.2;rm -rf /", "1|cat", "$(id)", "1$(id)", "`id`", "1&&id", "1 2", "-rf", "--help", ";", "a>b",
              "1\nRUN id", "é1"]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("name", ["go", "ministack", "postgres", "pip:requests", "npm:@scope/pkg", "npm:left-pad"])
def test_injection_in_versions_is_rejected(name: str, bad: str) -> None:
    message = error(f"{name}@{bad}")
    assert "versions may only contain letters, digits, '.', '-' and '_'" in message


@pytest.mark.parametrize("name", ["go", "postgres", "pip:requests"])
def test_empty_version_is_rejected(name: str) -> None:
    assert "empty version" in error(f"{name}@")


@pytest.mark.parametrize(
    "text",
    ["post;gres", "post gres", "$(id)", "`id`", "-rf", "@17", "pip:-r", "pip:req;uests", "pip:a b", "npm:-g",
     "npm:left|pad", "npm:@scope", "npm:Upper", "pip:", "npm:@/x"],
)
def test_injection_in_names_is_rejected(text: str) -> None:
    message = error(text)
    assert "invalid" in message


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_dependency(text: str) -> None:
    assert "empty dependency" in error(text)


@pytest.mark.parametrize(("value", "shown"), [(17, "17"), (None, "null"), ([1], "a list"), ({"a": 1}, "a mapping"),
                                               (True, "True")])
def test_non_string_dependency(value: object, shown: str) -> None:
    message = error(value)
    assert message.startswith("expected a string such as 'postgres@17'")
    assert shown in message


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("postgress", "postgres"),
        ("nodejs", "node"),
        ("pyton", "python"),
        ("Postgres", "postgres"),
        ("postgresql", "postgres"),
        ("golang", "go"),
        ("valkey", "redis"),
        ("mariadb", "mysql"),
        ("redis-tools", "redis-cli"),
        ("postgresql-client", "psql"),
    ],
)
def test_unknown_names_get_a_deterministic_suggestion(typo: str, suggestion: str) -> None:
    first = error(typo)
    assert f"unknown dependency '{typo}' — did you mean '{suggestion}'?" in first
    assert "moat deps list" in first
    assert error(typo) == first


def test_unknown_name_without_anything_close() -> None:
    message = error("kubernetes-operator-sdk")
    assert "unknown dependency 'kubernetes-operator-sdk'" in message
    assert "did you mean" not in message


def test_a_docker_mode_not_provided_yet_is_said_as_such() -> None:
    assert "is not provided yet" in error("docker:dind")
    assert "unknown dependency prefix" not in error("docker:dind")


def test_unknown_prefix() -> None:
    message = error("brew:wget")
    assert "unknown dependency prefix 'brew:'" in message
    assert "cargo:, go:, npm:, pip:, uv:" in message


# --- resolve_dependencies ----------------------------------------------------------------------


def test_same_dependency_twice_with_different_versions_is_an_error() -> None:
    deps, problems = resolve_dependencies(["postgres@16", "git", "postgres@17"], CATALOG)
    assert [d.spec for d in deps] == ["postgres@16", "git"]
    assert list(problems) == [2]
    assert "postgres is declared twice with different versions" in problems[2]
    assert "dependencies[0]" in problems[2]


def test_same_dependency_twice_identically_is_fine() -> None:
    deps, problems = resolve_dependencies(["postgres@16", "postgres@16", "git", "git"], CATALOG)
    assert problems == {}
    assert [d.spec for d in deps] == ["postgres@16", "git"]


def test_default_and_explicit_default_are_the_same_dependency() -> None:
    deps, problems = resolve_dependencies(["node", "node@22"], CATALOG)
    assert problems == {}
    assert [d.spec for d in deps] == ["node@22"]


def test_package_twice_with_different_versions() -> None:
    _, problems = resolve_dependencies(["python", "pip:requests@1", "pip:requests@2"], CATALOG)
    assert list(problems) == [2]


@pytest.mark.parametrize(("package", "runtime"), [("pip:requests", "python"), ("npm:typescript", "node"),
                                                  ("npm:@scope/pkg@1.2", "node")])
def test_package_managers_require_their_runtime(package: str, runtime: str) -> None:
    _, problems = resolve_dependencies(["git", package], CATALOG)
    assert list(problems) == [1]
    assert f"add '{runtime}' to dependencies" in problems[1]
    deps, problems = resolve_dependencies([package, runtime], CATALOG)
    assert problems == {}
    assert len(deps) == 2


def test_every_bad_entry_is_reported() -> None:
    deps, problems = resolve_dependencies(["postgress", "git", "python@2", "go@$(id)", 7], CATALOG)
    assert sorted(problems) == [0, 2, 3, 4]
    assert [d.name for d in deps] == ["git"]


# --- quoting -----------------------------------------------------------------------------------


def test_quote_packages_keeps_each_spec_one_shell_word() -> None:
    deps = [parse("pip:uvicorn[standard]@0.30"), parse("pip:requests")]
    quoted = quote_packages(deps, "==")
    assert [shlex.split(word) for word in quoted] == [["uvicorn[standard]==0.30"], ["requests"]]
    assert quoted[0] == "'uvicorn[standard]==0.30'"  # '[' is a shell glob character
    assert quote_packages([parse("go:golang.org/x/tools/gopls")], "@", "latest") == ["golang.org/x/tools/gopls@latest"]


# --- properties --------------------------------------------------------------------------------

_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=_SAFE, min_size=1, max_size=20).filter(lambda v: v[0] not in "._-"))
def test_any_well_formed_version_is_accepted_where_there_is_no_allow_list(version: str) -> None:
    assert parse(f"go@{version}").version == version


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(min_size=1, max_size=20).filter(
    lambda v: v.strip() == v and "@" not in v and not (v[0].isascii() and v[0].isalnum()
                                                       and all(c in _SAFE for c in v))))
def test_any_version_outside_the_alphabet_is_rejected(version: str) -> None:
    with pytest.raises(DependencyError):
        parse(f"go@{version}")
