"""Property: any moat.yaml text, however broken, ends in a Plan or a MoatError — never another exception.

Two sources of documents: random key/value trees (keys drawn from the schema's own field names, the
catalog's names and junk) dumped as YAML, and random text mutations of valid files (deleted,
inserted and swapped characters, duplicated or dropped lines, indentation changes, swapped tokens,
hostile values and %YAML directives). Each goes through parse_config → require_supported →
build_plan → to_dict / render_plan. A config-only property holds the load itself to a Config or a
ConfigError (``moat run --dry-run`` exits 0 or 2) with everything loaded printable.
"""

from __future__ import annotations

import io
import json
import math
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from ruamel.yaml import YAML

from moat.cli.planview import render_plan
from moat.config.features import require_supported
from moat.config.load import parse_config
from moat.config.schema import MoatConfig
from moat.errors import ConfigError, MoatError, UnsupportedFeatureError
from moat.plan.build import RunRequest, build_plan
from tests.unit.support import CATALOG, FULL_REFERENCE, PASSWORD_SHAPE, RUNNABLE

GENERATED_EXAMPLES = 1500
MUTATED_EXAMPLES = 1500

FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,  # keep no state outside the test tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# --- vocabulary --------------------------------------------------------------------------------


def _schema_keys(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every key name the schema knows, at any depth (walks nested models through their annotations)."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(info.alias or name)
        stack: list[Any] = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                keys |= _schema_keys(annotation, seen)
            stack.extend(typing.get_args(annotation))
    return keys


SCHEMA_KEYS = sorted(_schema_keys(MoatConfig) | {"models", "nofile", "nproc", "core"})
TOP_KEYS = sorted(MoatConfig.model_fields)
SERVICE_KEYS = ["env", "image", "wait", "memory", "ready_timeout", "provision_timeout", "models", "model"]
SERVICE_NAMES = [*CATALOG.service_names(), "python", "postgress", "pg"]
ENTRY_NAMES = [*CATALOG.names(), "postgress", "nodejs", "rust", "kubernetes"]
JUNK_KEYS = ["dependancies", "memroy", "imag", "sourc", "x", "", " ", "1", "-", "é", "a.b", "MOAT_RUN_ID", "~"]

DEP_STRINGS = st.one_of(
    st.sampled_from(ENTRY_NAMES),
    st.builds(lambda n, v: f"{n}@{v}", st.sampled_from(ENTRY_NAMES),
              st.sampled_from(["17", "16", "14", "3.12", "3.10", "22", "1.25", "0.18.1", "latest", "", "$(id)",
                               "1;rm", "-rf", "a b", "`x`"])),
    st.sampled_from(["pip:requests", "pip:requests@2.32.3", "pip:uvicorn[standard]", "npm:typescript@5",
                     "npm:@scope/pkg@1.2", "npm:@scope", "pip:", "uv:ruff", "brew:x", "pip:-r", "npm:left|pad"]),
)
TEXT = st.one_of(
    st.sampled_from(["postgres", "strict", "permissive", "docker", "apple", "true", "1.10", "", "-rf", "x; rm -rf /",
                     "$(id)", "llama3.2:1b", "./a:/b:ro", "allow GET /x", "op://v/i/f", "api.github.com", "ro",
                     "github", "none", "volume", "bind", "redis:7-alpine", "bad image", "p@ss:w/o rd%?#", "go"]),
    DEP_STRINGS,
    st.text(max_size=12),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, -1, 16, 63, 64, 128, 255, 256, 512, 65535, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
KEYS = st.one_of(st.sampled_from(SCHEMA_KEYS), st.sampled_from(SERVICE_NAMES), st.sampled_from(JUNK_KEYS),
                 st.text(max_size=8))
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)

SERVICE_BLOCK = st.dictionaries(
    st.one_of(st.sampled_from(SERVICE_KEYS), KEYS),
    st.one_of(
        SCALARS,
        st.lists(st.one_of(st.sampled_from(["llama3.2:1b", "nomic-embed-text", "x; rm -rf /", "-rf", ""]), SCALARS),
                 max_size=3),
        st.dictionaries(st.sampled_from(["POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "MYSQL_DATABASE",
                                         "MYSQL_ROOT_PASSWORD", "REDIS_PASSWORD", "OTHER", "1BAD"]),
                        st.one_of(TEXT, SCALARS), max_size=3),
    ),
    max_size=4,
)

STRUCTURED = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["demo", "my-run", "-bad", ""]), TEXT),
        "dependencies": st.lists(st.one_of(DEP_STRINGS, SCALARS), max_size=6),
        "services": st.dictionaries(st.sampled_from(SERVICE_NAMES), SERVICE_BLOCK, max_size=3),
        "env": st.dictionaries(st.sampled_from(["A", "APP_ENV", "MOAT_RUN_ID", "MOAT_POSTGRES_URL", "1BAD", "B"]),
                               st.one_of(TEXT, SCALARS), max_size=3),
        "command": st.one_of(st.lists(TEXT, max_size=3), TEXT),
        "container": st.dictionaries(st.sampled_from(["memory", "cpus", "dns", "ulimits", "memroy"]), TREES,
                                     max_size=3),
        "network": st.dictionaries(st.sampled_from(["policy", "rules", "host", "keep_policy", "allow"]), TREES,
                                   max_size=2),
        "snapshots": st.sampled_from([{"disabled": True}, {"disabled": False}, {"triggers": {"x": 1}}]),
        "tracing": st.sampled_from([{"disable_exec": True}, {"disable_exec": False}]),
        "base_image": st.sampled_from(["ubuntu:24.04", "bad image", "python:3.12-slim"]),
        "interactive": st.booleans(),
    },
)

DOCUMENTS = st.one_of(STRUCTURED, st.dictionaries(st.one_of(st.sampled_from(TOP_KEYS), KEYS), TREES, max_size=6),
                      TREES)

_YAML = YAML(typ="safe", pure=True)


def to_yaml(data: Any, flow: bool) -> str:
    _YAML.default_flow_style = flow
    stream = io.StringIO()
    _YAML.dump(data, stream)
    return stream.getvalue()


# --- the pipeline under test -------------------------------------------------------------------


def yaml_parses(text: str) -> bool:
    try:
        YAML(typ="rt").compose(text)
    except Exception:
        return False
    return True


def run_pipeline(text: str) -> str:
    """Run the text through everything a dry run does; return the kind of outcome."""
    try:
        config = parse_config(text, CATALOG, file=Path("/fuzz/moat.yaml"))
        require_supported(config)
        plan = build_plan(config, RunRequest(workspace=Path("/fuzz"), command=("true",)), CATALOG)
    except ConfigError as error:
        assert error.problems, "a ConfigError must carry at least one problem"
        parsed = yaml_parses(text)
        for problem in error.problems:
            assert problem.message.strip(), f"empty message in {error.render()!r}"
            if parsed:
                assert problem.line is not None and problem.line >= 1, f"no line for {problem} in\n{text}"
        assert error.render()
        return "config_error"
    except MoatError as error:
        assert error.render().strip()
        assert error.exit_code in (1, 2)
        return type(error).__name__
    # Every plan must render, as JSON and as text, with every generated password masked.
    data = plan.to_dict()
    dumped = json.dumps(data)
    text_view = render_plan(plan)
    for secret in plan.secrets:
        if PASSWORD_SHAPE.fullmatch(secret):
            assert secret not in dumped and secret not in text_view
    assert not any(isinstance(v, float) and math.isnan(v) for v in (data["limits"]["cpus"],))
    return "plan"


# --- generated documents -----------------------------------------------------------------------


def test_generated_documents_end_in_a_plan_or_a_moat_error() -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=GENERATED_EXAMPLES)
    @given(DOCUMENTS, st.booleans())
    def check(data: Any, flow: bool) -> None:
        outcomes[run_pipeline(to_yaml(data, flow))] += 1

    check()
    assert sum(outcomes.values()) >= GENERATED_EXAMPLES * 0.9
    # The generator must exercise both ends, or the property says little.
    assert outcomes["plan"] >= 50, outcomes
    assert outcomes["config_error"] >= 200, outcomes


# --- mutated documents -------------------------------------------------------------------------

SEEDS = [
    RUNNABLE,
    FULL_REFERENCE,
    "dependencies: [postgres@16, redis, ollama]\nservices:\n  ollama:\n    memory: 512\n    models: [llama3.2:1b]\n"
    "  postgres:\n    env: {POSTGRES_USER: app, POSTGRES_PASSWORD: 'p@ss:w/o rd%?#'}\n    wait: true\n"
    "env:\n  APP: one\ncommand: [psql, -c, 'select 1']\n",
    "name: tiny\ndependencies:\n  - python@3.12\n  - pip:requests@2.32.3\n  - git\n",
    "dependencies: [node, 'npm:@scope/pkg@1.2', mysql]\nservices:\n  mysql:\n    env:\n      MYSQL_DATABASE: shop\n"
    "    ready_timeout: 30\ncontainer:\n  memory: 1024\n  ulimits:\n    nofile: {soft: 1024, hard: 2048}\n",
]
# Values that once escaped as "internal error" (or reached a runtime): escapes YAML turns into a lone
# surrogate or NUL, control characters, integers past Python's 4300-digit print limit, overflowing
# floats, secret references.
HOSTILE_VALUES = ['"\\ud800"', '"a\\udfffb"', '"\\0"', '"pw\\nlogfile /some/path\\n"', '"\\x1b[31m"', '"\\t"',
                  '"\\x85"', "0x" + "f" * 5000, "9" * 4400, "-" + "7" * 120, "1e300", "-1e300", "1e-300", ".nan",
                  ".inf", "9223372036854775808", "op://vault/item/field", "ssm://p", "env://HOME", "''", "~"]
DIRECTIVES = ["%YAML 1.3\n---\n", "%YAML 1.1\n---\n", "%YAML 1.2\n---\n", "%YAML 2.0\n---\n", "%YAML 1\n---\n",
              "%YAML 1.2\n%YAML 1.2\n---\n", "%TAG !x! tag:x,2000:\n---\n", "%FOO bar\n---\n", "%YAML 1.3\n"]
INSERTS = [":", "-", " ", "  ", "\n", "[", "]", "{", "}", ",", "'", '"', "#", "@", "&", "*", "!", "|", ">", "%", "?",
           "\t", "\\", "x", "0", "é", "\x00", "\x7f", "\u2028", "~", "<<"]
TOKENS = [*SCHEMA_KEYS[:40], *SERVICE_NAMES, *ENTRY_NAMES, "null", "true", "-1", "0", "1.10", "[]", "{}", "''",
          "x; rm -rf /", "$(id)", "strict", "apple"]


TEXT_OPS = ["delete", "insert", "swap", "dup_line", "drop_line", "indent", "dedent", "token", "truncate"]
HOSTILE_OPS = ["value", "directive"]


@st.composite
def mutated_documents(draw: st.DrawFn, ops: list[str] = TEXT_OPS + HOSTILE_OPS) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        op = draw(st.sampled_from(ops))
        if not text:
            break
        pos = draw(st.integers(min_value=0, max_value=len(text) - 1))
        lines = text.split("\n")
        line_no = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        if op == "delete":
            size = draw(st.integers(min_value=1, max_value=3))
            text = text[:pos] + text[pos + size:]
        elif op == "insert":
            text = text[:pos] + draw(st.sampled_from(INSERTS)) + text[pos:]
        elif op == "swap" and pos + 1 < len(text):
            text = text[:pos] + text[pos + 1] + text[pos] + text[pos + 2:]
        elif op == "dup_line":
            lines.insert(line_no, lines[line_no])
            text = "\n".join(lines)
        elif op == "drop_line":
            del lines[line_no]
            text = "\n".join(lines)
        elif op == "indent":
            lines[line_no] = " " * draw(st.sampled_from([1, 2, 4])) + lines[line_no]
            text = "\n".join(lines)
        elif op == "dedent":
            lines[line_no] = lines[line_no][draw(st.sampled_from([1, 2])):]
            text = "\n".join(lines)
        elif op == "token":
            words = [w for w in lines[line_no].replace(":", " ").replace(",", " ").split() if w.isidentifier()]
            if words:
                old = draw(st.sampled_from(words))
                lines[line_no] = lines[line_no].replace(old, draw(st.sampled_from(TOKENS)), 1)
                text = "\n".join(lines)
        elif op == "truncate":
            text = text[:pos]
        elif op == "value":  # a hostile value in place of the one on this line (or as a list item)
            head, colon, _ = lines[line_no].partition(": ")
            hostile = draw(st.sampled_from(HOSTILE_VALUES))
            lines[line_no] = f"{head}: {hostile}" if colon else f"{head} [{hostile}]"
            text = "\n".join(lines)
        elif op == "directive":
            text = draw(st.sampled_from(DIRECTIVES)) + text
    return text


def test_mutated_documents_end_in_a_plan_or_a_moat_error() -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=MUTATED_EXAMPLES)
    @given(mutated_documents())
    def check(text: str) -> None:
        outcomes[run_pipeline(text)] += 1

    check()
    assert sum(outcomes.values()) >= MUTATED_EXAMPLES * 0.9
    assert outcomes["plan"] >= 50, outcomes
    assert outcomes["config_error"] >= 200, outcomes


def loads_or_config_error(text: str) -> str:
    """The load alone: a Config (every value printable) or a ConfigError; nothing else, ever."""
    try:
        config = parse_config(text, CATALOG, file=Path("/fuzz/moat.yaml"))
    except ConfigError as error:
        assert error.problems
        error.render().encode("utf-8")  # the CLI prints it
        return "config_error"
    try:
        require_supported(config)
    except UnsupportedFeatureError as error:
        error.render().encode("utf-8")
    # What loaded must print: no lone surrogate, no integer Python refuses to print.
    json.dumps(config.model.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
    return "config"


def test_hostile_mutations_load_or_end_in_a_config_error() -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=MUTATED_EXAMPLES)
    @given(mutated_documents(TEXT_OPS + HOSTILE_OPS * 4))
    def check(text: str) -> None:
        outcomes[loads_or_config_error(text)] += 1

    check()
    assert outcomes["config"] >= 50, outcomes
    assert outcomes["config_error"] >= 200, outcomes


# --- the seeds themselves, and known escapes ---------------------------------------------------


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_are_what_the_mutations_start_from(seed: int) -> None:
    expected = "UnsupportedFeatureError" if SEEDS[seed] is FULL_REFERENCE else "plan"
    assert run_pipeline(SEEDS[seed]) == expected


@pytest.mark.parametrize("text", [
    "dependencies: [postgres]\nservices:\n  postgres: &pg\n    <<: *pg\n",
    "env: " + "[" * 1000 + "]" * 1000 + "\n",
    "network:\n  rules:\n    - api.github.com: [null]\n",
    'env: {A: "\\ud800"}\n',
    "%YAML 1.3\n---\nname: x\n",
    "container:\n  memory: 0x" + "f" * 5000 + "\n",
    "container:\n  cpus: 1e300\n",
    'command: ["a\\0b"]\n',
    "dependencies: [redis]\nservices:\n  redis:\n    env: {REDIS_PASSWORD: \"pw\\nlogfile /x\"}\n",
])
def test_former_escapes_end_in_a_config_error(text: str) -> None:
    # Each of these once escaped the pipeline as RecursionError, AttributeError, UnicodeEncodeError,
    # AssertionError (ruamel, on %YAML 1.3), ValueError (printing a 6000-digit integer) or, at run
    # time, OverflowError; or reached a runtime that wrote it into a config file.
    assert run_pipeline(text) == "config_error"
    assert loads_or_config_error(text) == "config_error"
