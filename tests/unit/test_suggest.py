"""moat.suggest: deterministic "did you mean" suggestions."""

from __future__ import annotations

import itertools

import pytest

from moat.suggest import closest, did_you_mean
from tests.unit.support import CATALOG


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("postgress", "postgres"),
        ("postgre", "postgres"),
        ("nodejs", "node"),
        ("nod", "node"),
        ("pyton", "python"),
        ("pythn", "python"),
        ("reddis", "redis"),
        ("ollamma", "ollama"),
        ("ministak", "ministack"),
        ("sqlite", "sqlite3"),
        ("jqq", "jq"),
    ],
)
def test_closest_catalog_name(typo: str, expected: str) -> None:
    assert closest(typo, CATALOG.names()) == expected


def test_exact_match_wins_case_insensitively() -> None:
    assert closest("POSTGRES", ["postgres", "postgresql", "mysql"]) == "postgres"
    assert closest("Memory", ["memory", "memroy"]) == "memory"


def test_nothing_close_gives_no_suggestion() -> None:
    assert closest("kubernetes", CATALOG.names()) is None
    assert closest("zzzz", ["memory", "cpus"]) is None
    assert did_you_mean("zzzz", ["memory", "cpus"]) == ""
    assert closest("anything", []) is None


def test_did_you_mean_phrase() -> None:
    assert did_you_mean("memroy", ["memory", "cpus", "dns"]) == " — did you mean 'memory'?"


def test_shared_prefix_rescues_truncated_words() -> None:
    # 'pos' vs 'postgresql' is a poor character ratio (< 0.6) but a clear prefix.
    assert closest("pos", ["postgresql"]) == "postgresql"
    # ... and an extended word finds its stem.
    assert closest("redisserver", ["redis"]) == "redis"
    # Two letters are too few to count as a prefix match.
    assert closest("po", ["postgresql"]) is None


def test_ties_break_alphabetically_whatever_the_candidate_order() -> None:
    candidates = ["abcf", "abce", "abcg"]  # all score the same against 'abcd'
    results = {closest("abcd", list(order)) for order in itertools.permutations(candidates)}
    assert results == {"abce"}


def test_duplicates_and_iterables_are_accepted() -> None:
    assert closest("memroy", iter(["memory", "memory", "cpus"])) == "memory"


def test_suggestion_is_deterministic_across_orders() -> None:
    names = CATALOG.names()
    expected = closest("mysq", names)
    assert expected == "mysql"
    for order in (list(reversed(names)), sorted(names, key=len), names[1:] + names[:1]):
        assert closest("mysq", order) == expected
