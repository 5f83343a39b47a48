"""Loading moat.yaml and checking its shape: every key of the reference tool, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from moat.config.load import MAX_CONFIG_BYTES, find_config_file, load_config
from moat.errors import EXIT_USAGE, ConfigError, MoatError
from tests.unit.support import CATALOG, FULL_REFERENCE, config_error, only_problem, parse

# --- finding the file --------------------------------------------------------------------------


def test_moat_yaml_is_loaded(workspace: Path) -> None:
    (workspace / "moat.yaml").write_text("name: from-moat\ndependencies: [git]\n")
    config = load_config(workspace, CATALOG)
    assert config.file == workspace / "moat.yaml"
    assert config.model.name == "from-moat"
    assert [d.name for d in config.dependencies] == ["git"]


def test_agent_yaml_is_the_fallback(workspace: Path) -> None:
    (workspace / "agent.yaml").write_text("name: from-agent\n")
    config = load_config(workspace, CATALOG)
    assert config.file == workspace / "agent.yaml"
    assert config.model.name == "from-agent"


def test_moat_yaml_wins_over_agent_yaml(workspace: Path) -> None:
    (workspace / "moat.yaml").write_text("name: from-moat\n")
    (workspace / "agent.yaml").write_text("name: from-agent\n")
    assert load_config(workspace, CATALOG).model.name == "from-moat"


def test_no_file_is_the_empty_config(workspace: Path) -> None:
    config = load_config(workspace, CATALOG)
    assert config.file is None
    assert config.dependencies == ()
    assert config.provisions == {}
    assert config.model.name is None
    assert config.model.services == {}
    assert config.model.command is None
    assert config.where("env") == "command line"


def test_a_directory_named_moat_yaml_is_not_a_config(workspace: Path) -> None:
    (workspace / "moat.yaml").mkdir()
    (workspace / "agent.yaml").write_text("name: fallback\n")
    assert find_config_file(workspace) == workspace / "agent.yaml"


def test_empty_file_is_the_empty_config(workspace: Path) -> None:
    (workspace / "moat.yaml").write_text("# nothing yet\n")
    config = load_config(workspace, CATALOG)
    assert config.file == workspace / "moat.yaml"
    assert config.dependencies == ()


def test_not_utf8_is_a_config_error(workspace: Path) -> None:
    (workspace / "moat.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(workspace, CATALOG)
    assert "not UTF-8" in info.value.render()
    assert info.value.exit_code == EXIT_USAGE


def test_oversized_file_is_a_config_error(workspace: Path) -> None:
    (workspace / "moat.yaml").write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(workspace, CATALOG)


def test_the_document_must_be_a_mapping() -> None:
    for text in ("- a\n- b\n", "just text\n", "42\n"):
        path, message, line, _ = only_problem(text)
        assert path == "(top level)"
        assert "must be a mapping" in message
        assert line == 1


# --- every key of the reference tool loads -----------------------------------------------------

TOP_LEVEL = {
    "name": "name: my-run\n",
    "agent": "agent: claude\n",
    "version": "version: 1.10\n",
    "dependencies": "dependencies: [git]\n",
    "services": "dependencies: [postgres]\nservices:\n  postgres: {wait: false}\n",
    "env": "env: {A: b}\n",
    "secrets": "secrets: {TOKEN: op://vault/item/field}\n",
    "grants": "grants: [github]\n",
    "network": "network: {policy: strict}\n",
    "command": "command: [npm, start]\n",
    "interactive": "interactive: true\n",
    "runtime": "runtime: docker\n",
    "container": "container: {memory: 1024, cpus: 1.5, dns: [1.1.1.1], ulimits: {nofile: {soft: 1, hard: 2}}}\n",
    "base_image": "base_image: ubuntu:24.04\n",
    "mounts": "mounts: [./a:/a]\n",
    "volumes": "name: agent\nvolumes: [{name: v, target: /v}]\n",
    "ports": "ports: {web: 3000}\n",
    "hooks": "hooks: {pre_run: make}\n",
    "workspace": "workspace: {mode: volume}\n",
    "sandbox": "sandbox: none\n",
    "mcp": "mcp: [context7]\n",
    "snapshots": "snapshots: {disabled: true}\n",
    "tracing": "tracing: {disable_exec: true}\n",
    "language_servers": "language_servers: [go]\n",
    "devices": "devices: [{name: board, match: {usb: '2341:0043'}}]\n",
    "clipboard": "clipboard: true\n",
    "claude": "claude: {sync_logs: true}\n",
    "codex": "codex: {sync_logs: true}\n",
    "copilot": "copilot: {model: gpt-5}\n",
    "gemini": "gemini: {sync_logs: true}\n",
    "pi": "pi: {provider: anthropic}\n",
    "kiro": "kiro: {sync_logs: true}\n",
}


@pytest.mark.parametrize("key", sorted(TOP_LEVEL))
def test_every_top_level_key_loads(key: str) -> None:
    config = parse(TOP_LEVEL[key])
    assert key in config.model.model_fields_set


def test_the_full_reference_example_loads() -> None:
    config = parse(FULL_REFERENCE)
    model = config.model
    assert model.name == "full-example"
    assert model.version == "1.10"  # a version keeps its written text
    assert len(config.dependencies) == 24  # 21, and what its language servers add (gopls, uv, uv:pyright)
    assert config.provisions == {"ollama": ("llama3.2:1b", "nomic-embed-text")}
    assert model.services["postgres"].env == {"POSTGRES_USER": "app", "POSTGRES_DB": "appdb"}
    assert model.services["postgres"].ready_timeout == 90
    assert model.services["redis"].image == "redis:7-alpine"
    assert model.services["ministack"].wait is False
    assert model.env == {"APP_ENV": "test", "NUMERIC": "42"}
    # network.rules: both the string and the mapping form
    assert [(r.host, r.rules) for r in model.network.rules] == [
        ("pypi.org", []),
        ("api.github.com", ["allow GET /repos/**", "deny POST /repos/*/issues"]),
    ]
    assert model.network.keep_policy == "my-pack"
    # mounts: string and object form
    assert [(m.source, m.target, m.mode) for m in model.mounts] == [
        ("./data", "/data", "ro"), ("./logs", "/logs", ""), ("~/.cache/pip", "/home/moatuser/.cache/pip", "rw"),
    ]
    assert model.mounts[2].exclude == ["tmp"]
    assert model.container.ulimits["nofile"].soft == 1024
    assert model.container.ulimits["nproc"].hard == -1
    assert model.container.cpus == 2.5
    assert model.snapshots.triggers.disable_pre_run is True
    assert model.snapshots.triggers.idle_threshold_seconds == 60
    assert model.snapshots.retention.max_count == 5
    assert model.claude.marketplaces["acme"].source == "github"
    assert model.claude.marketplaces["local"].path == "./plugins"
    assert model.claude.mcp["files"].args == ["-y", "@modelcontextprotocol/server-filesystem"]
    assert model.claude.llm_gateway is not None
    assert model.claude.bedrock is not None and model.claude.bedrock.models.sonnet == "anthropic.claude-sonnet"
    assert [m.name for m in model.mcp] == ["context7", "remote"]
    assert model.devices[0].match.interface == "0"
    assert model.pi.packages == ["npm:@acme/pi-tools"]
    assert model.kiro.sync_logs is True


def test_full_reference_loads_from_agent_yaml_too(workspace: Path) -> None:
    (workspace / "agent.yaml").write_text(FULL_REFERENCE)
    config = load_config(workspace, CATALOG)
    assert config.model.copilot.experimental is True


def test_null_means_default() -> None:
    config = parse("dependencies: [postgres]\nservices:\n  postgres:\n    wait: null\n    ready_timeout:\ncontainer:\n")
    assert config.model.services["postgres"].wait is True
    assert config.model.services["postgres"].ready_timeout == 60
    assert config.model.container.memory == 0


def test_scalars_read_as_text_where_text_is_expected() -> None:
    model = parse("env: {A: 1.10, B: 007, C: true, D: null}\ncommand: [sleep, 10]\n").model
    assert model.env == {"A": "1.10", "B": "007", "C": "true", "D": ""}
    assert model.command == ["sleep", "10"]


# --- unknown keys, at every depth --------------------------------------------------------------

UNKNOWN = [
    # text, dotted path, line, column, suggestion (or None)
    ("dependancies: [postgres]\n", "dependancies", 1, 1, "dependencies"),
    ("name: x\ncontainer:\n  memroy: 512\n", "container.memroy", 3, 3, "memory"),
    ("network:\n  rulez: []\n", "network.rulez", 2, 3, "rules"),
    ("network:\n  rules:\n    - api.github.com: ['allow GET /x']\n  polcy: strict\n", "network.polcy", 4, 3, "policy"),
    ("claude:\n  marketplaces:\n    x:\n      source: github\n      sourc: git\n",
     "claude.marketplaces.x.sourc", 5, 7, "source"),
    ("snapshots:\n  triggers:\n    x: true\n", "snapshots.triggers.x", 3, 5, None),
    ("snapshots:\n  triggers:\n    disable_idel: true\n", "snapshots.triggers.disable_idel", 3, 5, "disable_idle"),
    ("dependencies: [postgres]\nservices:\n  postgres:\n    imag: pg\n", "services.postgres.imag", 4, 5, "image"),
    ("dependencies: [ollama]\nservices:\n  ollama:\n    model: [llama3]\n", "services.ollama.model", 4, 5, "models"),
    ("dependencies: [postgres]\nservices:\n  postgres:\n    envv: {}\n", "services.postgres.envv", 4, 5, "env"),
    ("container:\n  ulimits:\n    nofile: {soft: 1, hard: 2, hrad: 3}\n", "container.ulimits.nofile.hrad",
     3, 32, "hard"),
    ("container:\n  ulimits:\n    nofiles: {soft: 1, hard: 2}\n", "container.ulimits.nofiles", 3, 5, "nofile"),
    ("mounts:\n  - source: ./a\n    target: /a\n    mdoe: ro\n", "mounts[0].mdoe", 4, 5, "mode"),
    ("claude:\n  bedrock:\n    modles: {}\n", "claude.bedrock.modles", 3, 5, "models"),
    ("copilot:\n  autopilott: true\n", "copilot.autopilott", 2, 3, "autopilot"),
    ("hooks:\n  prerun: x\n", "hooks.prerun", 2, 3, "pre_run"),
]


@pytest.mark.parametrize(("text", "path", "line", "column", "suggestion"), UNKNOWN,
                         ids=[u[1] for u in UNKNOWN])
def test_unknown_keys_are_located_with_a_suggestion(text: str, path: str, line: int, column: int,
                                                    suggestion: str | None) -> None:
    error = config_error(text)
    assert error.exit_code == EXIT_USAGE
    problems = [p for p in error.problems if p.dotted == path]
    assert len(problems) == 1, error.render()
    found = problems[0]
    key = path.rsplit(".", 1)[-1].rsplit("]", maxsplit=1)[-1]
    assert f"unknown key '{key}'" in found.message
    assert (found.line, found.column) == (line, column)
    if suggestion:
        assert f"did you mean '{suggestion}'?" in found.message
    else:
        assert "did you mean" not in found.message
    rendered = error.render()
    assert f"moat.yaml:{line}:{column}: {path}: unknown key" in rendered
    assert config_error(text).render() == rendered  # deterministic


def test_error_names_the_file_line_and_column(workspace: Path) -> None:
    (workspace / "moat.yaml").write_text("dependencies: [ollama]\nservices:\n  ollama:\n    model: [llama3]\n")
    with pytest.raises(ConfigError) as info:
        load_config(workspace, CATALOG)
    rendered = info.value.render()
    assert f"{workspace / 'moat.yaml'}:4:5: services.ollama.model: unknown key 'model'" in rendered
    assert "did you mean 'models'?" in rendered
    assert rendered.startswith("moat.yaml: 1 problem found")


def test_unknown_ulimit_name_lists_the_valid_ones() -> None:
    _, message, _, _ = only_problem("container:\n  ulimits:\n    nofiles: {soft: 1, hard: 2}\n")
    assert "valid: core, cpu" in message


# --- wrong types and values --------------------------------------------------------------------


def test_memory_wrong_type_message() -> None:
    path, message, line, column = only_problem(
        "dependencies: [postgres]\nservices:\n  postgres:\n    memory: lots\n")
    assert path == "services.postgres.memory"
    assert message == "expected an integer number of megabytes, got 'lots'"
    assert (line, column) == (4, 13)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("container:\n  memory: big\n", "container.memory", "expected an integer number of megabytes (0 for no limit)"),
        ("container:\n  cpus: many\n", "container.cpus", "expected a number of CPUs, got 'many'"),
        ("command: npm start\n", "command", "expected a list of strings"),
        ("ports: {web: 70000}\n", "ports.web", "at most 65535"),
        ("ports: {web: http}\n", "ports.web", "expected a port number (1-65535), got 'http'"),
        ("dependencies: [postgres]\nservices:\n  postgres:\n    wait: maybe\n", "services.postgres.wait",
         "expected true or false, got 'maybe'"),
        ("dependencies: [postgres]\nservices:\n  postgres:\n    ready_timeout: soon\n",
         "services.postgres.ready_timeout", "expected a number of seconds, got 'soon'"),
        ("dependencies: [postgres]\nservices:\n  postgres:\n    ready_timeout: 0\n",
         "services.postgres.ready_timeout", "must be greater than 0"),
        ("runtime: podman\n", "runtime", "expected one of 'docker', 'apple', 'sandbox', 'kubernetes', got 'podman'"),
        ("network:\n  policy: strik\n", "network.policy", "did you mean 'strict'?"),
        ("name: ''\n", "name", "expected a name (not empty, without control characters), got ''"),
        ("name: \"a\\tb\"\n", "name", "got 'a\\tb'"),
        ("env: {A=B: x}\n", "env.A=B", "invalid key 'A=B': expected a variable name (not empty, without '='"),
        ("env: {'': x}\n", "env.", "invalid key '': expected a variable name"),
        ("env: {A: [1]}\n", "env.A", "expected a string, got a list"),
        ("dependencies: postgres\n", "dependencies", "expected a list, got 'postgres'"),
        ("mounts: ['a:b:c:d']\n", "mounts[0]", "must read SOURCE:TARGET"),
        ("network:\n  rules:\n    - api.github.com: ['permit everything']\n", "network.rules[0]",
         "must read 'allow|deny METHOD /path'"),
        ("network:\n  allow: [x.com]\n", "network", "network.allow is no longer supported"),
        ("container:\n  memory: 64\n", "container", "at least 128 MB"),
        ("container:\n  ulimits:\n    nofile: {soft: 10, hard: 5}\n", "container.ulimits.nofile",
         "soft (10) must not exceed hard (5)"),
        ("command: []\n", "(top level)", "command must name a program"),
        ("env: {A: x}\nsecrets: {A: op://x}\n", "(top level)", "A set in both env and secrets"),
        ("claude:\n  marketplaces:\n    x: {repo: a/b}\n", "claude.marketplaces.x.source", "required key 'source'"),
    ],
)
def test_wrong_values_are_located_and_explained(text: str, path: str, fragment: str) -> None:
    error = config_error(text)
    matching = [p for p in error.problems
                if (p.dotted == path or p.dotted.startswith((f"{path}.", f"{path}["))) and fragment in p.message]
    assert matching, error.render()
    assert all(p.line is not None for p in error.problems)


def test_several_problems_are_all_reported_sorted_by_line() -> None:
    text = (
        "name: ok\n"                      # 1
        "dependencies:\n"                 # 2
        "  - git\n"                       # 3
        "  - postgress\n"                 # 4  unknown dependency
        "container:\n"                    # 5
        "  cpus: lots\n"                  # 6  wrong type
        "frobnicate: 1\n"                 # 7  unknown key
        "env:\n"                          # 8
        "  X=Y: y\n"                      # 9  bad variable name
    )
    error = config_error(text)
    assert [p.line for p in error.problems] == [4, 6, 7, 9]
    assert [p.dotted for p in error.problems] == ["dependencies[1]", "container.cpus", "frobnicate", "env.X=Y"]
    rendered = error.render()
    assert rendered.startswith("moat.yaml: 4 problems found")
    positions = [rendered.index(p.dotted + ":") for p in error.problems]
    assert positions == sorted(positions)


def test_config_error_is_a_moat_error_with_a_hint() -> None:
    error = config_error("bogus: 1\n")
    assert isinstance(error, MoatError)
    assert error.hint and "moat.yaml reference" in error.hint
    assert error.render().endswith(error.hint)


def test_yaml_syntax_error_through_parse_config() -> None:
    path, message, line, column = only_problem("name: x\ndependencies: [git\nenv: {}\n")
    assert path == "(top level)"
    assert message.startswith("YAML syntax error")
    assert (line, column) == (3, 4)


def test_duplicate_key_through_parse_config() -> None:
    path, message, line, _ = only_problem("dependencies: [git]\nname: a\ncommand: [x]\nname: b\n")
    assert path == "name"
    assert "duplicate key 'name' (first defined on line 2)" in message
    assert line == 4


def test_problems_from_both_passes_are_reported_together() -> None:
    text = (
        "dependencies: [ollama]\n"
        "container:\n"
        "  memroy: 512\n"
        "services:\n"
        "  ollama:\n"
        "    model: [llama3]\n"
        "  redis: {}\n"
    )
    error = config_error(text)
    assert {p.dotted for p in error.problems} == {"container.memroy", "services.ollama.model", "services.redis"}


@pytest.mark.parametrize(("text", "value", "rule_word"), [
    ("mounts: ['./a:relative']\n", "relative", "/"),
    ("pi: {packages: [left-pad]}\n", "left-pad", "npm:"),
    ("volumes: [{name: Bad, target: /v}]\n", "Bad", "lowercase"),
    ("claude: {base_url: 'ftp://x'}\n", "ftp://x", "http"),
    ("mcp: [{name: a, url: 'ftp://x'}]\n", "ftp://x", "https://"),
])
def test_a_string_breaking_a_pattern_is_told_the_rule(text: str, value: str, rule_word: str) -> None:
    # Once rendered as "expected a string, got '<a string>'".
    _, message, line, _ = only_problem(text)
    assert "expected a string" not in message
    assert message.startswith("expected ")
    assert rule_word in message.removesuffix(f"got {value!r}")
    assert message.endswith(f"got {value!r}")
    assert line == 1


@pytest.mark.parametrize("rule", ["null", "1", "true", "[a]", ""])
def test_non_string_network_rule_is_a_config_error(rule: str) -> None:
    text = f"network:\n  rules:\n    - api.github.com: [{rule}]\n" if rule else \
        "network:\n  rules:\n    - api.github.com:\n        -\n"
    path, _, line, _ = only_problem(text)
    assert path.startswith("network.rules[0]")
    assert line == (3 if rule else 4)


@pytest.mark.parametrize(("text", "expected"), [
    ("services:\n  redis:\n    memory: lots\n",
     {"services.redis.memory": "expected an integer", "services.redis": "not declared in dependencies"}),
    ("dependencies: [postgres]\nservices:\n  postgress:\n    wait: maybe\n",
     {"services.postgress": "did you mean 'postgres'?"}),
    ("dependencies: [ollama]\nservices:\n  ollama:\n    memory: lots\n    models: llama3\n",
     {"services.ollama.memory": "expected an integer", "services.ollama.models": "must be a list"}),
])
def test_service_block_with_a_type_error_still_gets_its_catalog_checks(text: str, expected: dict[str, str]) -> None:
    error = config_error(text)
    messages = {p.dotted: p.message for p in error.problems}
    for path, fragment in expected.items():
        assert path in messages, error.render()
        assert fragment in messages[path]


def test_wait_false_with_models_is_reported_next_to_a_type_error() -> None:
    text = "dependencies: [ollama]\nservices:\n  ollama:\n    wait: false\n    models: [a]\n    memory: lots\n"
    error = config_error(text)
    messages = {p.dotted: p.message for p in error.problems}
    assert "expected an integer" in messages.get("services.ollama.memory", "")
    assert "wait: false cannot be combined with models" in messages.get("services.ollama.wait", "")
