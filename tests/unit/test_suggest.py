"""moat.suggest: deterministic "did you mean" suggestions."""

from __future__ import annotations

import itertools
from difflib import SequenceMatcher

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


def test_a_very_long_word_gets_no_suggestion_and_costs_nothing() -> None:
    assert closest("postgres" * 1000, ["postgres"]) is None
    assert closest("p" * 101, ["p" * 101]) is None  # not even an exact match is worth the time


def _reference(word: str, candidates: list[str]) -> str | None:
    """The suggestion as computed before the quick bounds: every candidate's full ratio."""
    best: tuple[float, str] | None = None
    for candidate in sorted(set(candidates)):
        a, b = word.lower(), candidate.lower()
        score = 2.0 if a == b else SequenceMatcher(None, a, b, autojunk=False).ratio()
        if a != b and min(len(a), len(b)) >= 3 and (a.startswith(b) or b.startswith(a)):
            score = max(score, 0.75)
        if score >= 0.6 and (best is None or score > best[0]):
            best = (score, candidate)
    return best[1] if best else None


def test_the_quick_bounds_change_no_suggestion() -> None:
    names = CATALOG.names()
    words = [*names, *(n[:-1] for n in names), *(n[1:] for n in names), *(n + "s" for n in names),
             *(n[::-1] for n in names), "pg", "xyz", "pyhton", "gti", "olama", "ministak", "", "a", "postgresql-16"]
    for word in words:
        assert closest(word, names) == _reference(word, names), word
