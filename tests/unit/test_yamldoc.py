"""moat.config.yamldoc: YAML text → plain values with every key's and value's position."""

from __future__ import annotations

import math

import pytest

from moat.config.yamldoc import (
    MAX_DEPTH,
    Marks,
    YamlFloat,
    YamlInt,
    YamlProblem,
    load_document,
    scalar_text,
)
from moat.errors import ConfigError
from tests.unit.support import config_error


def problem(text: str):  # type: ignore[no-untyped-def]
    with pytest.raises(YamlProblem) as info:
        load_document(text)
    return info.value.problem


def test_empty_and_comment_only_documents_are_none() -> None:
    for text in ("", "\n\n", "# only a comment\n"):
        data, marks = load_document(text)
        assert data is None
        assert marks.values == {}
    assert load_document("---\n")[0] is None


def test_scalars_keep_their_written_text() -> None:
    data, _ = load_document("version: 1.10\nn: 007\nh: 0x1F\nf: 1e3\ns: '1.10'\nb: True\nnul: ~\nt: yes\n")
    assert isinstance(data["version"], YamlFloat)
    assert data["version"] == 1.1 and data["version"].text == "1.10"
    assert scalar_text(data["version"]) == "1.10"
    assert isinstance(data["n"], YamlInt) and data["n"] == 7 and scalar_text(data["n"]) == "007"
    assert data["h"] == 31 and scalar_text(data["h"]) == "0x1F"
    assert data["f"] == 1000.0
    assert data["s"] == "1.10" and type(data["s"]) is str  # quoted: always a string
    assert data["b"] is True
    assert data["nul"] is None
    assert data["t"] == "yes"  # YAML 1.2: 'yes' is a string


def test_special_floats() -> None:
    data, _ = load_document("a: .inf\nb: -.inf\nc: .nan\n")
    assert data["a"] == math.inf
    assert data["b"] == -math.inf
    assert math.isnan(data["c"])


def test_scalar_text_of_non_scalars() -> None:
    assert scalar_text([1]) is None
    assert scalar_text({"a": 1}) is None
    assert scalar_text(False) == "false"
    assert scalar_text(3) == "3"


def test_marks_are_one_based_for_keys_and_values() -> None:
    data, marks = load_document("name: foo\nservices:\n  postgres:\n    memory: 512\n")
    assert data == {"name": "foo", "services": {"postgres": {"memory": 512}}}
    assert marks.keys[("name",)] == (1, 1)
    assert marks.values[("name",)] == (1, 7)
    assert marks.keys[("services", "postgres", "memory")] == (4, 5)
    assert marks.values[("services", "postgres", "memory")] == (4, 13)


def test_sequence_items_have_marks() -> None:
    _, marks = load_document("dependencies:\n  - git\n  - postgres@17\n")
    assert marks.values[("dependencies", 1)] == (3, 5)


def test_locate_falls_back_to_the_nearest_ancestor() -> None:
    _, marks = load_document("container:\n  memory: 512\n")
    assert marks.locate(("container", "missing", "deeper")) == (2, 3)
    assert marks.locate(("container",), prefer_key=True) == (1, 1)
    assert marks.locate(("container",)) == (2, 3)
    assert Marks().locate(("anything",)) == (None, None)


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("a: [1, 2\nb: 3\n", 2, 2, "expected ',' or ']'"),
        ("a: b: c\n", 1, 5, "mapping values are not allowed here"),
        ("a:\n  b: 1\n c: 2\n", 3, 2, "expected <block end>"),
        ("a: 'unterminated\n", 2, 1, "quoted scalar"),
        ("a: *nowhere\n", 1, 4, "undefined alias"),
    ],
)
def test_syntax_errors_report_line_and_column(text: str, line: int, column: int, fragment: str) -> None:
    found = problem(text)
    assert found.message.startswith("YAML syntax error")
    assert fragment in found.message
    assert (found.line, found.column) == (line, column)


def test_duplicate_key_names_the_first_line() -> None:
    found = problem("name: x\ncommand: [a]\nname: y\n")
    assert found.path == ("name",)
    assert found.message == "duplicate key 'name' (first defined on line 1)"
    assert (found.line, found.column) == (3, 1)


def test_nested_duplicate_key() -> None:
    found = problem("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n")
    assert found.path == ("b", "c")
    assert "first defined on line 3" in found.message
    assert found.line == 5


def test_second_document_is_an_error() -> None:
    found = problem("a: 1\n---\nb: 2\n")
    assert "single document" in found.message
    assert found.line == 2


def test_recursive_alias_is_an_error_not_a_hang() -> None:
    found = problem("a: &x [*x]\n")
    assert "recursive alias" in found.message
    assert found.line == 1


def test_alias_expansion_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    found = problem("\n".join(lines) + "\n")
    assert "document too large" in found.message


def test_depth_is_bounded() -> None:
    text = "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "v\n"
    found = problem(text)
    assert f"nested more than {MAX_DEPTH} levels deep" in found.message
    assert found.line is not None


def test_mapping_keys_must_be_scalars() -> None:
    found = problem("? [a, b]\n: 1\n")
    assert "a mapping key must be a plain value" in found.message
    assert found.line == 1


def test_merge_keys_fill_in_what_the_mapping_does_not_set() -> None:
    data, _ = load_document("base: &b {k: 1, j: 2}\nderived:\n  <<: *b\n  k: 3\n")
    assert data["derived"] == {"k": 3, "j": 2}
    data, _ = load_document("x: &x {a: 1}\ny: &y {b: 2}\nz:\n  <<: [*x, *y]\n")
    assert data["z"] == {"a": 1, "b": 2}


def test_merge_of_a_scalar_is_an_error() -> None:
    found = problem("env:\n  <<: 3\n")
    assert "'<<' (merge) needs a mapping" in found.message


def test_explicit_key_next_to_a_merge_keeps_its_own_line() -> None:
    _, marks = load_document("base: &b {k: 1, j: 2}\nderived:\n  <<: *b\n  k: 3\n")
    assert marks.keys[("derived", "k")] == (4, 3)


def test_unknown_key_next_to_a_merge_is_located_on_its_own_line() -> None:
    text = ("dependencies: [postgres, redis]\n"
            "services:\n"
            "  redis: &r\n"
            "    imag: a\n"
            "  postgres:\n"
            "    <<: *r\n"
            "    imag: b\n")
    error = config_error(text)
    lines = {p.dotted: p.line for p in error.problems}
    assert lines == {"services.redis.imag": 4, "services.postgres.imag": 7}


def test_self_merge_is_a_located_error() -> None:
    # Once a RecursionError: the merge path bypassed the recursive-alias check.
    found = problem("a: &x\n  <<: *x\n")
    assert "merge" in found.message
    assert found.line == 1


def test_deep_flow_nesting_is_an_error_not_a_crash() -> None:
    # Once a RecursionError from ruamel's recursive composer.
    found = problem("a: " + "[" * 1000 + "]" * 1000 + "\n")
    assert f"nested more than {MAX_DEPTH} levels" in found.message


def test_control_character_is_located() -> None:
    error = config_error("name: demo\ncommand: [a\x00]\n")
    assert isinstance(error, ConfigError)
    assert len(error.problems) == 1
    assert (error.problems[0].line, error.problems[0].column) == (2, 12)
    assert "U+0000" in error.problems[0].message or "#x0000" in error.problems[0].message


def test_each_merge_counts_as_work_even_when_it_adds_nothing() -> None:
    # Merging an empty mapping built no value, so the count never moved: 10**10 merges, hours.
    lines = ["z0: &z0 {}"] + [f"z{n}: &z{n} {{<<: [{', '.join([f'*z{n - 1}'] * 10)}]}}" for n in range(1, 11)]
    found = problem("\n".join(lines) + "\n")
    assert "document too large" in found.message and "merge keys" in found.message


def test_yaml_1_1_booleans_read_as_booleans_under_a_1_1_directive() -> None:
    data, _ = load_document("%YAML 1.1\n---\na: yes\nb: no\nc: on\nd: off\n")
    assert data == {"a": True, "b": False, "c": True, "d": False}


def test_nul_and_lone_surrogates_are_refused_where_they_are() -> None:
    found = problem('a:\n  b: [x, "y\\0"]\n')
    assert (found.path, found.line, found.column) == (("a", "b", 1), 2, 10)
    assert found.message == "contains a NUL character (U+0000); remove it"
    found = problem('"k\\udc00": 1\n')
    assert found.message == "contains a lone surrogate escape (U+DC00), not a character; remove it"
