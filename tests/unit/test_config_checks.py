"""moat.yaml's meaning against the catalog: dependencies and each services.<name> block."""

from __future__ import annotations

import pytest

from moat.errors import EXIT_USAGE
from tests.unit.support import CATALOG, config_error, only_problem, parse


def svc(name: str, body: str, deps: str | None = None) -> str:
    """A moat.yaml declaring ``deps`` (default: the service) with ``body`` under services.<name>."""
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return f"dependencies: [{deps or name}]\nservices:\n  {name}:\n{indented}"


# --- dependencies in moat.yaml -----------------------------------------------------------------


def test_unknown_dependency_is_located_with_a_suggestion() -> None:
    path, message, line, column = only_problem("name: x\ndependencies:\n  - git\n  - postgress\n")
    assert path == "dependencies[1]"
    assert "unknown dependency 'postgress' — did you mean 'postgres'?" in message
    assert (line, column) == (4, 5)


def test_dependency_problems_are_all_reported() -> None:
    error = config_error("dependencies:\n  - nodejs\n  - postgres@14\n  - go@1.2;rm\n  - pip:requests\n")
    assert error.exit_code == EXIT_USAGE
    by_path = {p.dotted: p for p in error.problems}
    assert set(by_path) == {"dependencies[0]", "dependencies[1]", "dependencies[2]", "dependencies[3]"}
    assert "did you mean 'node'?" in by_path["dependencies[0]"].message
    assert "available: 15, 16, 17" in by_path["dependencies[1]"].message
    assert "versions may only contain" in by_path["dependencies[2]"].message
    assert "add 'python' to dependencies" in by_path["dependencies[3]"].message
    assert [p.line for p in error.problems] == [2, 3, 4, 5]


def test_conflicting_versions_in_moat_yaml() -> None:
    path, message, line, _ = only_problem("dependencies:\n  - postgres@16\n  - postgres@17\n")
    assert path == "dependencies[1]"
    assert "declared twice with different versions" in message
    assert line == 3


def test_identical_duplicate_in_moat_yaml_is_fine() -> None:
    config = parse("dependencies: [git, postgres@16, git, postgres@16]\n")
    assert [d.spec for d in config.dependencies] == ["git", "postgres@16"]


def test_version_written_as_a_number_keeps_its_text() -> None:
    # `python@3.10` is one string in YAML either way; this guards the list form too.
    config = parse("dependencies:\n  - python@3.10\n  - node@20\n")
    assert [d.spec for d in config.dependencies] == ["python@3.10", "node@20"]


def test_scoped_npm_package_in_moat_yaml() -> None:
    config = parse("dependencies: [node, 'npm:@scope/pkg@1.2']\n")
    assert [d.spec for d in config.dependencies] == ["node@22", "npm:@scope/pkg@1.2"]


# --- services.<name> -------------------------------------------------------------------------


def test_defaults() -> None:
    override = parse(svc("postgres", "env: {}")).model.services["postgres"]
    assert override.wait is True
    assert override.ready_timeout == 60
    assert override.memory is None
    assert override.image is None
    assert override.provision_timeout > 0


def test_every_documented_key_loads() -> None:
    text = svc("ollama", "env: {OLLAMA_KEEP_ALIVE: 5m, NUM: 3}\nimage: ollama/ollama:rocm\nwait: true\n"
                         "memory: 2048\nready_timeout: 120\nprovision_timeout: 900\nmodels: [llama3.2:1b]")
    config = parse(text)
    override = config.model.services["ollama"]
    assert override.env == {"OLLAMA_KEEP_ALIVE": "5m", "NUM": "3"}
    assert override.image == "ollama/ollama:rocm"
    assert override.memory == 2048
    assert override.ready_timeout == 120
    assert override.provision_timeout == 900
    assert config.provisions == {"ollama": ("llama3.2:1b",)}


def test_service_block_for_a_service_not_in_dependencies() -> None:
    path, message, line, column = only_problem("dependencies: [redis]\nservices:\n  postgres: {wait: false}\n")
    assert path == "services.postgres"
    assert "'postgres' is not declared in dependencies" in message
    assert "add '- postgres' to dependencies" in message
    assert (line, column) == (3, 3)


def test_empty_service_block_for_an_undeclared_service_is_still_an_error() -> None:
    path, message, _, _ = only_problem("services:\n  redis: {}\n")
    assert path == "services.redis"
    assert "not declared in dependencies" in message


def test_invalid_version_of_a_configured_service_is_reported_at_the_dependency() -> None:
    error = config_error("dependencies: [postgres@14]\nservices:\n  postgres: {}\n")
    dependency = [p for p in error.problems if p.dotted == "dependencies[0]"]
    assert len(dependency) == 1
    assert "invalid version '14' for postgres" in dependency[0].message
    assert dependency[0].line == 1


@pytest.mark.parametrize(("typo", "suggestion"), [("postgress", "postgres"), ("olama", "ollama"),
                                                  ("postgresql", "postgres"), ("reddis", "redis")])
def test_unknown_service_gets_a_suggestion(typo: str, suggestion: str) -> None:
    path, message, line, _ = only_problem(f"dependencies: [{suggestion}]\nservices:\n  {typo}: {{}}\n")
    assert path == f"services.{typo}"
    assert f"unknown service '{typo}' — did you mean '{suggestion}'?" in message
    assert line == 3


def test_a_runtime_is_not_a_service() -> None:
    path, message, _, _ = only_problem("dependencies: [python]\nservices:\n  python: {}\n")
    assert path == "services.python"
    assert "'python' is a runtime, not a service" in message


@pytest.mark.parametrize("name", ["postgres", "mysql", "redis", "ollama", "ministack"])
def test_memory_minimum_per_service(name: str) -> None:
    minimum = CATALOG.service(name).min_memory_mb  # type: ignore[union-attr]
    on_disk = f"memory: {minimum}\nstorage: disk"
    assert parse(svc(name, on_disk)).model.services[name].memory == minimum
    path, message, line, _ = only_problem(svc(name, f"memory: {minimum - 1}\nstorage: disk"))
    assert path == f"services.{name}.memory"
    assert message == f"{name} needs at least {minimum} MB, got {minimum - 1}"
    assert line == 4


def test_data_kept_in_memory_raises_the_minimum() -> None:
    # postgres with its data in a tmpfs is OOM-killed at 64 MB (measured): said before anything starts.
    path, message, _, _ = only_problem(svc("postgres", "memory: 64"))
    assert path == "services.postgres.memory"
    assert message.startswith("postgres needs at least 96 MB, got 64 (its data is kept in memory")
    assert "with storage: disk 64 MB is enough" in message
    assert parse(svc("postgres", "memory: 96")).model.services["postgres"].memory == 96


@pytest.mark.parametrize("value", ["0", "-512"])
def test_memory_must_be_positive(value: str) -> None:
    path, message, _, _ = only_problem(svc("postgres", f"memory: {value}"))
    assert path == "services.postgres.memory"
    assert "greater than 0" in message


def test_memory_must_be_an_integer() -> None:
    path, message, _, _ = only_problem(svc("postgres", "memory: 512.5"))
    assert path == "services.postgres.memory"
    assert "expected an integer number of megabytes" in message


def test_image_override_must_be_an_image_reference() -> None:
    assert parse(svc("postgres", "image: my.registry:5000/team/pg:16")).model.services["postgres"].image == \
        "my.registry:5000/team/pg:16"
    path, message, _, _ = only_problem(svc("postgres", "image: 'pg; rm -rf /'"))
    assert path == "services.postgres.image"
    assert "expected an image reference" in message


def test_env_values_must_be_strings_and_names_variables() -> None:
    error = config_error(svc("postgres", "env:\n  GOOD: 1\n  9-GOOD: x\n  BAD=X: x\n  NESTED: {a: b}"))
    assert {p.dotted for p in error.problems} == {"services.postgres.env.BAD=X", "services.postgres.env.NESTED"}


@pytest.mark.parametrize("variable", ["POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"])
def test_empty_credential_override_is_an_error(variable: str) -> None:
    path, message, _, _ = only_problem(svc("postgres", f"env: {{{variable}: ''}}"))
    assert path == f"services.postgres.env.{variable}"
    assert "is empty" in message


# --- provisions (ollama models) ----------------------------------------------------------------


def test_models_are_collected_in_order_without_duplicates() -> None:
    config = parse(svc("ollama", "models: [llama3.2:1b, nomic-embed-text, llama3.2:1b, hf.co/org/m@sha]"))
    assert config.provisions == {"ollama": ("llama3.2:1b", "nomic-embed-text", "hf.co/org/m@sha")}


def test_models_scalar_must_be_a_list() -> None:
    path, message, line, column = only_problem(svc("ollama", "models: llama3"))
    assert path == "services.ollama.models"
    assert "models must be a list" in message
    assert "got 'llama3'" in message
    assert (line, column) == (4, 13)


def test_models_mapping_must_be_a_list() -> None:
    _, message, _, _ = only_problem(svc("ollama", "models: {llama3: true}"))
    assert "must be a list" in message


def test_empty_models_list_provisions_nothing() -> None:
    config = parse(svc("ollama", "models: []"))
    assert config.provisions == {}
    assert parse(svc("ollama", "models:")).provisions == {}


def test_wait_false_with_models_is_an_error() -> None:
    path, message, line, _ = only_problem(svc("ollama", "wait: false\nmodels: [llama3]"))
    assert path == "services.ollama.wait"
    assert "wait: false cannot be combined with models" in message
    assert line == 4


def test_wait_false_without_models_is_fine() -> None:
    assert parse(svc("ollama", "wait: false\nmodels: []")).model.services["ollama"].wait is False
    assert parse(svc("postgres", "wait: false")).model.services["postgres"].wait is False


def test_memory_and_models_together_are_accepted() -> None:
    config = parse(svc("ollama", "memory: 4096\nmodels: [llama3.2:1b]"))
    assert config.model.services["ollama"].memory == 4096
    assert config.provisions == {"ollama": ("llama3.2:1b",)}


def test_models_on_a_service_without_provisions_is_an_unknown_key() -> None:
    path, message, _, _ = only_problem(svc("postgres", "models: [x]"))
    assert path == "services.postgres.models"
    assert "unknown key 'models'" in message


MODEL_INJECTIONS = ["x; rm -rf /", "llama|sh", "$(id)", "`id`", "a&&b", "llama 3", "-rf", "--insecure", "",
                    "a\nb", "a>b", "'quoted'"]


@pytest.mark.parametrize("bad", MODEL_INJECTIONS)
def test_injection_in_model_names_is_rejected(bad: str) -> None:
    quoted = bad.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    path, message, line, _ = only_problem(svc("ollama", f'models: [llama3, "{quoted}"]'))
    assert path == "services.ollama.models[1]"
    assert message.startswith("invalid model name")
    assert line == 4


@pytest.mark.parametrize("item", ["true", "null", "[a]", "{a: b}"])
def test_non_string_model_names_are_rejected(item: str) -> None:
    path, message, _, _ = only_problem(svc("ollama", f"models: [{item}]"))
    assert path == "services.ollama.models[0]"
    assert "invalid model name" in message


def test_model_name_with_a_trailing_newline_is_rejected() -> None:
    error = config_error(svc("ollama", 'models: ["llama3\\n"]'))
    assert [p.dotted for p in error.problems] == ["services.ollama.models[0]"]


VERSION_INJECTIONS = ["1.25;rm -rf /", "1|cat /etc/passwd", "$(id)", "`id`", "1&&id", "1 2", "-rf", ""]


@pytest.mark.parametrize("bad", VERSION_INJECTIONS)
@pytest.mark.parametrize("name", ["go", "ministack", "pip:requests"])
def test_injection_in_versions_via_moat_yaml_is_rejected(name: str, bad: str) -> None:
    deps = "[python, " if name.startswith("pip:") else "["
    path, message, line, _ = only_problem(f'name: x\ndependencies: {deps}"{name}@{bad}"]\n')
    assert path == ("dependencies[1]" if name.startswith("pip:") else "dependencies[0]")
    assert "version" in message
    assert line == 2


def test_a_number_in_dependencies_is_named_as_written() -> None:
    error = config_error("dependencies: [3.10]\n")
    assert "'3.10'" in error.problems[0].message
