"""Real moat.yaml files of the Go tool load here as they load there (majorcontext/moat,
internal/config/config.go), and what this moat cannot honour yet stops a run, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from moat.catalog.deps import parse_dependency
from moat.cli.deps import deps
from moat.config.features import require_supported, unsupported
from moat.config.load import load_config
from moat.config.schema import ServiceOverride
from moat.errors import EXIT_USAGE, ConfigError, UnsupportedFeatureError, UsageError
from tests.unit.support import CATALOG, config_error, only_problem, parse

# --- agent blocks ----------------------------------------------------------------------------------


def test_copilot_context_and_reasoning_effort_and_codex_shared_sessions_load() -> None:
    config = parse("copilot:\n  context: long_context\n  reasoning_effort: xhigh\n"
                   "codex:\n  shared_sessions: true\n  sync_logs: true\n")
    assert config.model.copilot.context == "long_context"
    assert config.model.copilot.reasoning_effort == "xhigh"
    assert config.model.codex.shared_sessions is True
    # Copilot's settings are read by `moat copilot`, Codex's synced sessions too; sharing the host's is not built.
    assert [".".join(path) for path, _ in unsupported(config)] == ["codex.shared_sessions"]
    with pytest.raises(UnsupportedFeatureError, match=r"not supported yet: codex\.shared_sessions"):
        require_supported(config)


def test_copilot_values_are_the_documented_ones() -> None:
    path, message, line, _ = only_problem("copilot:\n  reasoning_effort: hihg\n")
    assert (path, line) == ("copilot.reasoning_effort", 2)
    assert "did you mean 'high'?" in message
    assert only_problem("copilot: {context: huge}\n")[0] == "copilot.context"


# --- dependencies ----------------------------------------------------------------------------------


def test_python_3_9_is_a_valid_version() -> None:
    dep = parse_dependency("python@3.9", CATALOG)
    assert (dep.name, dep.version) == ("python", "3.9")
    assert parse("dependencies: [python@3.9]\n").dependencies[0].version == "3.9"


# --- empty service blocks --------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["  postgres:\n", "  postgres: ~\n", "  postgres: {}\n"])
def test_an_empty_service_block_means_the_defaults(block: str) -> None:
    config = parse(f"dependencies: [postgres]\nservices:\n{block}")
    assert config.model.services == {"postgres": ServiceOverride()}
    assert config.provisions == {}


def test_an_empty_services_key_means_no_overrides() -> None:
    assert parse("dependencies: [postgres]\nservices:\n").model.services == {}


def test_an_empty_service_block_is_still_checked_against_the_dependencies() -> None:
    path, message, _, _ = only_problem("dependencies: [git]\nservices:\n  postgres:\n")
    assert path == "services.postgres"
    assert "not declared in dependencies" in message


def test_an_empty_service_block_next_to_a_schema_error_adds_no_problem() -> None:
    error = config_error("dependencies: [postgres]\nservices:\n  postgres:\nfrobnicate: 1\n")
    assert [p.dotted for p in error.problems] == ["frobnicate"]


# --- names and env keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad name", "-bad", "my_project.v2", "проект", "x" * 200, "a/b"])
def test_any_printable_name_loads(name: str) -> None:
    assert parse(f"name: '{name}'\n").model.name == name


@pytest.mark.parametrize(("text", "shown"), [("name: ''\n", "''"), ('name: "a\\tb"\n', "'a\\tb'"),
                                             ('name: "a\\x1bb"\n', "'a\\x1bb'")])
def test_an_empty_name_or_one_with_control_characters_is_refused(text: str, shown: str) -> None:
    path, message, _, _ = only_problem(text)
    assert path == "name"
    assert message == f"expected a name (not empty, without control characters), got {shown}"


@pytest.mark.parametrize("key", ["MY-VAR", "my.var", "1ST", "a b", "ÉTÉ", "_"])
def test_env_keys_load_as_the_go_tool_takes_them(key: str) -> None:
    text = f"env:\n  '{key}': x\ndependencies: [postgres]\nservices:\n  postgres:\n    env:\n      '{key}': y\n"
    config = parse(text)
    assert config.model.env == {key: "x"}
    assert config.model.services["postgres"].env == {key: "y"}


@pytest.mark.parametrize(("key", "path"), [("A=B", "env.A=B"), ("", "env."), ("=", "env.=")])
def test_env_keys_that_no_environment_can_hold_are_refused(key: str, path: str) -> None:
    dotted, message, line, _ = only_problem(f"env:\n  '{key}': x\n")
    assert (dotted, line) == (path, 2)
    assert message == f"invalid key {key!r}: expected a variable name (not empty, without '=' or control characters)"


def test_secrets_must_be_references_as_in_the_go_tool() -> None:
    path, message, _, _ = only_problem("secrets: {TOKEN: hunter2}\n")
    assert path == "secrets.TOKEN"
    assert message == "expected a secret reference such as 'op://vault/item/field' (scheme://path)"
    assert "hunter2" not in config_error("secrets: {TOKEN: hunter2}\n").render()


# --- secret references in services.<n>.env --------------------------------------------------------


@pytest.mark.parametrize("reference", ["op://vault/pg/password", "ssm://prod/db/password", "env://PGPASSWORD"])
def test_a_secret_reference_in_a_service_env_is_not_used_as_a_password(workspace: Path, reference: str) -> None:
    (workspace / "moat.yaml").write_text(
        "dependencies: [postgres]\nservices:\n  postgres:\n    env:\n      POSTGRES_USER: app\n"
        f"      POSTGRES_PASSWORD: {reference}\n")
    config = load_config(workspace, CATALOG)
    with pytest.raises(UnsupportedFeatureError) as info:
        require_supported(config)
    error = info.value
    assert error.exit_code == EXIT_USAGE
    head, where = error.message.splitlines()[:2]
    assert head == "not supported yet: services.postgres.env.POSTGRES_PASSWORD"
    assert where.startswith("  services.postgres.env.POSTGRES_PASSWORD (moat.yaml:6): secret references")


@pytest.mark.parametrize("text", [
    "dependencies: [postgres]\nservices:\n  postgres:\n    env: {POSTGRES_PASSWORD: 'p@ss://word'}\n",
    "dependencies: [ministack]\nservices:\n  ministack:\n    env: {ENDPOINT: 'https://example.com'}\n",
    "env: {TOKEN: op://vault/item/field}\n",  # the Go tool passes top-level env values as they are
])
def test_values_that_are_not_secret_references_are_plain_values(text: str) -> None:
    require_supported(parse(text))


# --- moat deps info ---------------------------------------------------------------------------------


def deps_info_error(name: str) -> UsageError:
    result = CliRunner().invoke(deps, ["info", name])
    assert isinstance(result.exception, UsageError), result.output
    assert result.exception.exit_code == EXIT_USAGE
    return result.exception


# Every dependency of the Go tool's catalog (its registry's 83 names; docker with a mode).
GO_CATALOG = [
    "act", "air", "aws", "bat", "bats", "black", "buf", "bun", "claude-code", "cli-essentials", "codex-cli",
    "copilot-cli", "curl", "delta", "docker:host", "eslint", "fd", "fzf", "gcloud", "gemini-cli", "gh", "git", "go",
    "go-extras", "gofumpt", "golangci-lint", "gopls", "goreleaser", "govulncheck", "graphite-cli", "helm", "jq",
    "k8s", "kubectl", "lazygit", "make", "ministack", "mockgen", "mypy", "mysql", "mysql-client", "node", "node-dev",
    "npm", "ollama", "opentofu", "pi-cli", "playwright", "pnpm", "postgres", "prettier", "protobuf", "protobuf-es",
    "protobuf-grpc-gateway", "protoc", "protoc-gen-connect-es", "protoc-gen-connect-go", "protoc-gen-doc",
    "protoc-gen-es", "protoc-gen-go", "protoc-gen-go-grpc", "protoc-gen-grpc-gateway", "protoc-gen-grpc-gateway-ts",
    "protoc-gen-openapiv2", "protoc-gen-validate", "psql", "pytest", "python", "python-dev", "redis", "redis-cli",
    "ripgrep", "ruff", "rust", "sqlc", "sqlite3", "task", "terraform", "terragrunt", "typescript", "uv", "yarn", "yq",
]


def test_every_dependency_of_the_go_catalog_is_provided() -> None:
    """Named with what it needs (its requirements come from the other names of the list)."""
    names = "".join(f"'{n}', " for n in GO_CATALOG)
    config = parse(f"dependencies: [{names}]\n")
    assert len(GO_CATALOG) == 83
    assert {d.name for d in config.dependencies} >= {n for n in GO_CATALOG if n not in (
        "cli-essentials", "go-extras", "k8s", "node-dev", "protobuf", "protobuf-es", "protobuf-grpc-gateway",
        "python-dev")}  # bundles stand for their members


def test_deps_info_of_docker_dind_says_it_is_not_provided_yet() -> None:
    message = deps_info_error("docker:dind").message
    assert "not provided yet" in message
    # The same words as moat run.
    assert message.endswith(config_error("dependencies: ['docker:dind']\n").problems[0].message.split(": ", 1)[1])


def test_every_prefix_of_the_go_moat_is_provided() -> None:
    assert config_error("dependencies: [rust, 'cargo:ripgrep', python, 'pip:x', go, 'go:golang.org/x/y',"
                        " uv, 'uv:x', node, 'npm:x', 'brew:x']\n").problems[0].message.startswith(
        "unknown dependency prefix 'brew:'")


def test_deps_info_still_calls_an_unknown_name_unknown() -> None:
    assert deps_info_error("postgress").message.startswith("unknown dependency 'postgress' — did you mean 'postgres'?")
    assert deps_info_error("brew:").message.startswith("unknown dependency prefix 'brew:'")


@pytest.mark.parametrize(("name", "kind"), [("pip:requests", "dynamic"), ("npm:", "dynamic"), ("python", "runtime")])
def test_deps_info_describes_what_exists(name: str, kind: str) -> None:
    result = CliRunner().invoke(deps, ["info", name, "--json"])
    assert result.exit_code == 0, result.output
    assert f'"type": "{kind}"' in result.output


@pytest.mark.parametrize("text", ["dependncies:\n", "foo:\n", "network:\n  polcy:\n",
                                  "dependencies: [redis]\nservices:\n  redis:\n    memroy:\n"])
def test_an_unknown_key_with_no_value_is_still_an_unknown_key(text: str) -> None:
    # Null meant "the default" for every key, known or not: `dependncies:` passed silently.
    error = config_error(text)
    assert any("unknown key" in p.message for p in error.problems), error.render()


def test_a_config_that_is_not_a_regular_file_or_links_outside_the_workspace_is_refused(tmp_path: Path) -> None:
    import os

    from moat.config.load import load_config

    outside = tmp_path / "secret"
    outside.write_text("root:$6$hash:19000:0:99999:7:::\n")
    link = tmp_path / "ws1"
    link.mkdir()
    (link / "moat.yaml").symlink_to(outside)
    with pytest.raises(ConfigError) as info:
        load_config(link, CATALOG)
    assert "outside the workspace" in info.value.render() and "$6$hash" not in info.value.render()
    fifo = tmp_path / "ws2"
    fifo.mkdir()
    os.mkfifo(fifo / "moat.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo, CATALOG)
    inside = tmp_path / "ws3"
    inside.mkdir()
    (inside / "shared.yaml").write_text("name: linked\n")
    (inside / "moat.yaml").symlink_to(inside / "shared.yaml")  # a link within the workspace is fine
    assert load_config(inside, CATALOG).model.name == "linked"
