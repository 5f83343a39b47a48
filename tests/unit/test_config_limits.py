"""Hostile or absurd moat.yaml files end in a located ConfigError, quickly, and never reach a run.

Each test here once failed: YAML bombs that kept ``moat run --dry-run`` busy for minutes, inputs that
ended in "internal error", control characters that a runtime would write into a server's config,
and numbers that passed loading and overflowed when the run started.
"""

from __future__ import annotations

import time

import pytest

from moat.config.load import MAX_PROBLEMS, parse_config
from moat.config.schema import MAX_INT64, MAX_MEMORY_MB
from moat.config.yamldoc import MAX_DEPTH, MAX_LINE, MAX_SIZE, MAX_VALUES, load_document
from moat.errors import ConfigError
from tests.unit.support import CATALOG, config_error, only_problem, parse

# Generous next to the milliseconds these take now; each case once took from 15 s to hours.
FAST = 2.0


def timed_error(text: str) -> tuple[ConfigError, float]:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_config(text, CATALOG)
    return info.value, time.perf_counter() - start


def merge_bomb(first: str, levels: int = 10, fan: int = 10) -> str:
    """``z1: &z1 {<<: [*z0, ×10]}``, ten levels deep: 10**10 merges if each is done again."""
    lines = [f"z0: &z0 {first}"]
    lines += [f"z{n}: &z{n} {{<<: [{', '.join([f'*z{n - 1}'] * fan)}]}}" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# --- YAML bombs and oversized text -------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("first", ["{}", "{a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}"])
def test_nested_merge_keys_are_refused_quickly(first: str) -> None:
    # With an empty z0 the old counter never moved: every merge re-walked its sources (hours).
    error, took = timed_error(merge_bomb(first))
    assert took < FAST
    (problem,) = error.problems
    assert f"more than {MAX_VALUES} values" in problem.message and "merge" in problem.message
    assert problem.line is not None


@pytest.mark.timeout(20)
def test_a_one_megabyte_comment_line_is_refused_quickly() -> None:
    # ruamel took 15 s over it, and the file then loaded.
    error, took = timed_error("dependencies: [git]\n#" + "x" * 1_000_000 + "\n")
    assert took < FAST
    assert error.problems[0].message == f"file is larger than {MAX_SIZE // 1024} KiB; a moat.yaml is a few kilobytes"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("line", ["#" + "x" * (MAX_LINE + 1), "name: " + "x" * MAX_LINE,
                                  "env: {A: '" + "x" * MAX_LINE + "'}"])
def test_a_line_longer_than_the_limit_is_refused_before_parsing(line: str) -> None:
    error, took = timed_error("dependencies: [git]\n" + line + "\n")
    assert took < FAST
    (problem,) = error.problems
    assert problem.message == f"line 2 is {len(line)} characters long; lines may be at most {MAX_LINE}"
    assert (problem.line, problem.column) == (2, 1)


def test_a_line_at_the_limit_still_loads() -> None:
    assert parse("# " + "x" * (MAX_LINE - 2) + "\nname: ok\n").model.name == "ok"


def test_lines_are_counted_as_yaml_counts_them() -> None:
    # A carriage return alone ends a line for YAML: a file with old Mac line ends is not one long line.
    text = "\r".join(["# " + "x" * 1000] * 20) + "\rname: ok\r"
    assert len(text) > MAX_LINE
    assert parse(text).model.name == "ok"


def test_text_larger_than_the_limit_is_refused() -> None:
    error = config_error("\n" * (MAX_SIZE + 1))
    assert f"larger than {MAX_SIZE // 1024} KiB" in error.problems[0].message
    assert parse("\n" * MAX_SIZE).model.name is None


@pytest.mark.timeout(20)
def test_thousands_of_problems_are_cut_short_quickly() -> None:
    # Each unknown name costs a did-you-mean; ten thousand of them once took seconds.
    text = "dependencies:\n" + "".join(f"  - zzq{i}\n" for i in range(5000))
    error, took = timed_error(text)
    assert took < FAST
    assert len(error.problems) == MAX_PROBLEMS + 1
    assert error.problems[0].message == f"{5000 - MAX_PROBLEMS} more problems not shown; fix these and run again"
    assert error.problems[1].message.startswith("unknown dependency 'zzq0'")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", ["env: " + "[" * 15000 + "\n", "a:\n" + ("  " + "[" * 8000 + "\n") * 7,
                                  "env: " + "{a: " * 4000 + "\n"])
def test_deep_brackets_are_refused_before_parsing(text: str) -> None:
    # ruamel's scanner works in proportion to the open brackets for each token: 60,000 '[' took 5 s.
    error, took = timed_error(text)
    assert took < FAST
    (problem,) = error.problems
    assert problem.message == f"nested more than {MAX_DEPTH} levels deep"
    assert problem.line is not None


def test_brackets_in_quotes_and_comments_do_not_count_as_nesting() -> None:
    text = ("a: '" + "[" * 300 + "'\n"
            "b: 'it''s " + "{" * 300 + "'\n"
            'c: "\\" ' + "[" * 300 + '"\n'
            "# " + "[" * 300 + "\n"
            "d: [x]  # " + "[" * 300 + "\n")
    data, _ = load_document(text)
    assert data == {"a": "[" * 300, "b": "it's " + "{" * 300, "c": '" ' + "[" * 300, "d": ["x"]}


# --- inputs that ended in "internal error" ------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "fragment", "line"), [
    ('env: {A: "\\ud800"}\n', "env.A", "lone surrogate escape (U+D800)", 1),
    ('command: [x, "a\\udfffb"]\n', "command[1]", "lone surrogate escape (U+DFFF)", 1),
    ('env:\n  "\\ud800": x\n', "env", "lone surrogate escape (U+D800)", 2),
    ('command: ["a\\0b"]\n', "command[0]", "a NUL character (U+0000)", 1),
    ('name: "\\x00"\n', "name", "a NUL character (U+0000)", 1),
    ("%YAML 1.3\n---\nname: x\n", "(top level)", "unsupported YAML version '1.3'", 1),
    ("# a comment\n%YAML 1.9\n---\nname: x\n", "(top level)", "unsupported YAML version '1.9'", 2),
])
def test_former_internal_errors_are_located_config_errors(text: str, path: str, fragment: str, line: int) -> None:
    dotted, message, at, _ = only_problem(text)
    assert dotted == path
    assert fragment in message
    assert at == line


@pytest.mark.parametrize("digits", ["0x" + "f" * 5000, "1" * 5000, "0o" + "7" * 6000, "-" + "9" * 200])
def test_a_huge_integer_is_a_located_error_not_a_crash(digits: str) -> None:
    # A 5000-digit hex integer parsed, then failed when printed (Python's 4300-digit limit).
    path, message, line, column = only_problem(f"container:\n  memory: {digits}\n")
    assert path == "container.memory"
    assert (line, column) == (2, 11)
    assert f"({len(digits)} characters)" in message  # named, not printed in full
    assert len(message) < 200


def test_a_huge_integer_is_still_text_where_text_is_expected() -> None:
    assert parse("env: {BIG: 0x" + "f" * 5000 + "}\n").model.env["BIG"] == "0x" + "f" * 5000


@pytest.mark.parametrize("directive", ["%YAML 1.1", "%YAML 1.2"])
def test_supported_yaml_directives_load(directive: str) -> None:
    assert parse(f"{directive}\n---\nname: x\ninteractive: yes\n").model.name == "x"


# --- control characters in env values -------------------------------------------------------------

PASSWORD = "pw\nlogfile /some/path\n"

ENV_MAPS = [
    ("env:\n  {key}: {value}\n", "env"),
    ("secrets:\n  {key}: {value}\n", "secrets"),
    ("dependencies: [redis]\nservices:\n  redis:\n    env:\n      {key}: {value}\n", "services.redis.env"),
    ("claude:\n  env:\n    {key}: {value}\n", "claude.env"),
    ("claude:\n  mcp:\n    files:\n      command: npx\n      env:\n        {key}: {value}\n", "claude.mcp.files.env"),
    ("codex:\n  mcp:\n    files:\n      command: npx\n      env:\n        {key}: {value}\n", "codex.mcp.files.env"),
    ("gemini:\n  mcp:\n    files:\n      command: npx\n      env:\n        {key}: {value}\n", "gemini.mcp.files.env"),
]


@pytest.mark.parametrize(("template", "where"), ENV_MAPS, ids=[w for _, w in ENV_MAPS])
def test_a_control_character_in_any_env_value_is_refused_without_showing_it(template: str, where: str) -> None:
    # The sandbox wrote REDIS_PASSWORD into redis's config: a newline there was a config injection.
    value = '"op://v/i\\nlogfile /some/path"' if where == "secrets" else '"pw\\nlogfile /some/path\\n"'
    error = config_error(template.format(key="REDIS_PASSWORD", value=value))
    (problem,) = error.problems
    assert problem.dotted == f"{where}.REDIS_PASSWORD"
    assert problem.message == "contains a control character (U+000A); values must be a single line"
    assert problem.line == template.count("\n")
    rendered = error.render()
    assert "logfile" not in rendered and "pw" not in rendered.replace("PASSWORD", "")


@pytest.mark.parametrize(("escape", "code"), [("\\t", "0009"), ("\\r", "000D"), ("\\x1b", "001B"), ("\\x7f", "007F"),
                                              ("\\x85", "0085"), ("\\a", "0007")])
def test_every_control_character_is_refused(escape: str, code: str) -> None:
    text = f'dependencies: [postgres]\nservices:\n  postgres:\n    env:\n      POSTGRES_PASSWORD: "a{escape}b"\n'
    _, message, _, _ = only_problem(text)
    assert message == f"contains a control character (U+{code}); values must be a single line"


def test_a_key_with_a_control_character_is_refused_at_the_yaml_level() -> None:
    path, message, line, _ = only_problem('env:\n  "A\\nB": x\n')
    assert path == "env"
    assert message == "a key contains a control character (U+000A): 'A\\nB'"
    assert line == 2


def test_printable_values_are_untouched() -> None:
    value = "p@ss:w/o rd%?# é ü — 中"
    config = parse(f"dependencies: [postgres]\nservices:\n  postgres:\n    env:\n      POSTGRES_PASSWORD: '{value}'\n")
    assert config.model.services["postgres"].env["POSTGRES_PASSWORD"] == value


# --- numeric ranges ---------------------------------------------------------------------------------

CPUS = "0 (no limit), or 0.01 to 1024 CPUs"


@pytest.mark.parametrize(("text", "path", "message"), [
    ("container:\n  cpus: 1e300\n", "container.cpus", f"must be at most 1024, got 1e300 (allowed: {CPUS})"),
    ("container:\n  cpus: 1025\n", "container.cpus", f"must be at most 1024, got 1025 (allowed: {CPUS})"),
    ("container:\n  cpus: 0.001\n", "container.cpus", "must be 0 (no limit) or at least 0.01, got 0.001"),
    ("container:\n  cpus: -1\n", "container.cpus", f"must be at least 0, got -1 (allowed: {CPUS})"),
    ("container:\n  memory: 99999999999999999999\n", "container.memory",
     f"must be at most {MAX_MEMORY_MB}, got 99999999999999999999 (allowed: 0 (no limit), or 128 to {MAX_MEMORY_MB}"
     " megabytes (16 TiB))"),
    ("container:\n  memory: 64\n", "container.memory", "must be 0 (no limit) or at least 128 MB, got 64"),
    ("dependencies: [postgres]\nservices:\n  postgres:\n    memory: 16777217\n", "services.postgres.memory",
     f"must be at most {MAX_MEMORY_MB}, got 16777217 (allowed: 1 to {MAX_MEMORY_MB} megabytes (16 TiB))"),
    ("container:\n  ulimits:\n    nofile: {soft: 1, hard: 9223372036854775808}\n", "container.ulimits.nofile.hard",
     f"must be at most {MAX_INT64}, got 9223372036854775808 (allowed: -1 (unlimited), or 0 to {MAX_INT64})"),
    ("container:\n  ulimits:\n    nofile: {soft: 1e30, hard: 1}\n", "container.ulimits.nofile.soft",
     "expected an integer, got 1e30"),
    ("dependencies: [postgres]\nservices:\n  postgres:\n    ready_timeout: 1e300\n", "services.postgres.ready_timeout",
     "must be at most 3600, got 1e300 (allowed: more than 0 and at most 3600 seconds (one hour))"),
    ("dependencies: [ollama]\nservices:\n  ollama:\n    provision_timeout: .inf\n", "services.ollama.provision_timeout",
     "expected a number of seconds, got .inf"),
    ("ports: {web: 0}\n", "ports.web", "must be at least 1, got 0 (allowed: 1 to 65535)"),
    ("network:\n  host: [65536]\n", "network.host[0]", "must be at most 65535, got 65536 (allowed: 1 to 65535)"),
    ("snapshots:\n  retention: {max_count: 99999999999999999999}\n", "snapshots.retention.max_count",
     f"must be at most {MAX_INT64}, got 99999999999999999999"),
])
def test_numbers_outside_their_range_are_located_with_the_range(text: str, path: str, message: str) -> None:
    dotted, found, line, _ = only_problem(text)
    assert dotted == path
    assert found == message
    assert line == text.count("\n")


@pytest.mark.parametrize("text", [
    "container:\n  cpus: 1024\n  memory: 16777216\n",
    "container:\n  cpus: 0.01\n  memory: 128\n",
    "container:\n  cpus: 0\n  memory: 0\n",
    f"container:\n  ulimits:\n    nofile: {{soft: {MAX_INT64}, hard: {MAX_INT64}}}\n    core: {{soft: -1, hard: -1}}\n",
])
def test_numbers_at_the_ends_of_their_ranges_load(text: str) -> None:
    parse(text)
