"""moat.plan: config + catalog + command line → a pure-data run plan, with secrets masked in output."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from moat.cli.planview import render_plan
from moat.constants import MASK
from moat.errors import EXIT_USAGE, ConfigError, UsageError
from moat.plan.build import RunRequest, build_plan, image_tag
from moat.plan.identity import Identity, agent_identity
from moat.plan.model import Plan
from moat.plan.names import new_run_id, random_name
from tests.unit.support import (
    AWKWARD_PASSWORD,
    CATALOG,
    PASSWORD_SHAPE,
    RUNNABLE,
    WORKSPACE,
    Passwords,
    config_error,
    parse,
    plan_for,
    service,
)

RUN_ID = re.compile(r"^run_[0-9a-f]{12}$")
TAG = re.compile(r"^moat/run:[0-9a-f]{16}$")
FRIENDLY = re.compile(r"^[a-z]+-[a-z]+$")


# --- identity ----------------------------------------------------------------------------------


def test_run_id_and_network() -> None:
    plan = plan_for("")
    assert RUN_ID.match(plan.run_id)
    assert plan.network == f"moat-{plan.run_id}"
    assert plan_for("").run_id != plan.run_id


def test_explicit_run_id_is_used() -> None:
    config = parse("dependencies: [postgres]\n")
    plan = build_plan(config, RunRequest(workspace=WORKSPACE, command=("x",)), CATALOG, run_id="run_0123456789ab")
    assert plan.run_id == "run_0123456789ab"
    assert plan.env["MOAT_RUN_ID"] == "run_0123456789ab"
    assert service(plan, "postgres").container_name == "moat-postgres-run_0123456789ab"


def test_names_module() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100 and all(RUN_ID.match(i) for i in ids)
    names = {random_name() for _ in range(100)}
    assert all(FRIENDLY.match(n) for n in names)
    assert len(names) > 1


def test_name_from_the_command_line_wins() -> None:
    assert plan_for("name: from-config\n", name="from-cli").name == "from-cli"


def test_name_from_config() -> None:
    plan = plan_for("name: from-config\n")
    assert plan.name == "from-config"
    assert plan.env["MOAT_RUN_NAME"] == "from-config"


def test_name_defaults_to_adjective_animal() -> None:
    plan = plan_for("")
    assert FRIENDLY.match(plan.name), plan.name
    assert plan.env["MOAT_RUN_NAME"] == plan.name


@pytest.mark.parametrize("bad", ["", "  ", "a" * 129, "tab\there", "bell\x07"])
def test_invalid_cli_name(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid --name"):
        plan_for("", name=bad)


@pytest.mark.parametrize("name", ["has space", "semi;colon", "ünï", "-x", "a" * 128])
def test_names_people_give_are_accepted_and_never_reach_engine_object_names(name: str) -> None:
    # The Go tool accepts any name: engine objects are named after the run id, never the name.
    plan = plan_for("dependencies: [redis]\n", name=name)
    assert plan.name == name and plan.env["MOAT_RUN_NAME"] == name
    names = [plan.network, plan.agent.name, *(s.container.name for s in plan.services)]
    assert all(re.fullmatch(r"[a-z0-9_-]+", n) for n in names), names


def test_cli_name_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(UsageError):
        plan_for("", name="demo\n")


# --- image -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deps", "base"),
    [
        ("[]", "debian:bookworm-slim"),
        ("[git, jq]", "debian:bookworm-slim"),
        ("[python]", "python:3.11-slim"),
        ("[python@3.13, pip:requests]", "python:3.13-slim"),
        ("[node]", "node:22-slim"),
        ("[node@18, 'npm:@scope/pkg@1.2']", "node:18-slim"),
        ("[go]", "golang:1.25"),
        ("[go@1.22.3, git]", "golang:1.22.3"),
        ("[python, node]", "debian:bookworm-slim"),
        ("[python, go, node]", "debian:bookworm-slim"),
        ("[postgres, redis]", "debian:bookworm-slim"),
    ],
)
def test_base_image(deps: str, base: str) -> None:
    plan = plan_for(f"dependencies: {deps}\n")
    assert plan.image.base_image == base
    assert plan.image.dockerfile.startswith(f"FROM {base}\n")


def test_base_image_key_wins() -> None:
    plan = plan_for("base_image: ubuntu:24.04\ndependencies: [python@3.12]\n")
    assert plan.image.base_image == "ubuntu:24.04"
    assert plan.image.dockerfile.startswith("FROM ubuntu:24.04\n")


def test_tag_shape_and_determinism() -> None:
    text = "dependencies: [python@3.12, git, pip:requests@2.32.3, postgres]\n"
    first, second = plan_for(text), plan_for(text)
    assert TAG.match(first.image.tag)
    assert first.run_id != second.run_id
    assert first.image.tag == second.image.tag
    assert first.image.tag == image_tag(list(first.image.dependencies), first.image.dockerfile)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("[python@3.12]", "[python@3.13]"),
        ("[python]", "[python, git]"),
        ("[python, pip:requests@2.31]", "[python, pip:requests@2.32]"),
        ("[node, npm:typescript]", "[node, npm:typescript@5]"),
        ("[git]", "[jq]"),
        ("[go@1.24]", "[go@1.25]"),
        ("[]", "[python]"),
    ],
)
def test_tag_differs_when_dependencies_differ(one: str, other: str) -> None:
    assert plan_for(f"dependencies: {one}\n").image.tag != plan_for(f"dependencies: {other}\n").image.tag


def test_tag_differs_for_another_uid() -> None:
    one, other = plan_for("", identity=Identity(1000, 1000)), plan_for("", identity=Identity(1001, 1001))
    assert one.image.tag != other.image.tag


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("[git, jq, curl]", "[curl, git, jq]"),
        ("[python, pip:b, pip:a, git]", "[git, pip:a, python, pip:b]"),
        ("[node, npm:b, 'npm:@s/a']", "['npm:@s/a', npm:b, node]"),
        ("[postgres, redis, python]", "[python, redis, postgres]"),
    ],
)
def test_tag_is_independent_of_dependency_order(one: str, other: str) -> None:
    a, b = plan_for(f"dependencies: {one}\n"), plan_for(f"dependencies: {other}\n")
    assert a.image.tag == b.image.tag
    assert a.image.dependencies == b.image.dependencies


def test_tag_is_independent_of_runtime_order() -> None:
    a = plan_for("dependencies: [python, node]\n")
    b = plan_for("dependencies: [node, python]\n")
    assert a.image.tag == b.image.tag


def test_image_dependencies_are_canonical_and_exclude_services() -> None:
    plan = plan_for("dependencies: [redis, python@3.12, git, pip:requests, postgres@16]\n")
    assert plan.image.dependencies == ("git", "pip:requests", "python@3.12")


# --- Dockerfile --------------------------------------------------------------------------------


def run_lines(dockerfile: str) -> list[str]:
    return [line for line in dockerfile.replace("\\\n", " ").splitlines() if line.startswith("RUN ")]


def test_dockerfile_installs_the_tools_apt_packages() -> None:
    plan = plan_for("dependencies: [git, curl, jq, make, sqlite3, bats, psql, mysql-client, redis-cli]\n")
    apt = next(line for line in run_lines(plan.image.dockerfile) if "apt-get install" in line)
    words = set(shlex.split(apt.removeprefix("RUN ")))
    assert {"git", "curl", "jq", "make", "sqlite3", "bats", "postgresql-client", "default-mysql-client",
            "redis-tools", "ca-certificates"} <= words


def test_dockerfile_pip_and_npm_installs_are_quoted_words() -> None:
    plan = plan_for("dependencies: [python, node, 'pip:uvicorn[standard]@0.30', pip:requests, "
                    "'npm:@scope/pkg@1.2', npm:typescript@5.4.5]\n")
    lines = run_lines(plan.image.dockerfile)
    pip = next(line for line in lines if "pip install" in line)
    npm = next(line for line in lines if "npm install" in line)
    assert shlex.split(pip)[-2:] == ["requests", "uvicorn[standard]==0.30"]
    assert shlex.split(npm)[-2:] == ["@scope/pkg@1.2", "typescript@5.4.5"]
    assert "'uvicorn[standard]==0.30'" in pip


def test_dockerfile_runs_as_a_non_root_user() -> None:
    plan = plan_for("dependencies: [node]\n", identity=Identity(1234, 2345))
    dockerfile = plan.image.dockerfile
    assert "useradd" in dockerfile and "-u 1234 -g 2345" in dockerfile
    assert dockerfile.rstrip().splitlines()[-2:] == ["USER 1234:2345", "WORKDIR /workspace"]
    assert (plan.image.uid, plan.image.gid) == (1234, 2345)


def test_dockerfile_with_several_runtimes_copies_each_in() -> None:
    plan = plan_for("dependencies: [python@3.12, node@20, go@1.24]\n")
    dockerfile = plan.image.dockerfile
    assert "COPY --from=python:3.12-slim-bookworm /usr/local/ /usr/local/" in dockerfile
    assert "COPY --from=node:20-bookworm-slim /usr/local/ /usr/local/" in dockerfile
    assert "COPY --from=golang:1.24-bookworm /usr/local/go /usr/local/go" in dockerfile
    assert "libssl3" in dockerfile  # python's shared libraries on the Debian base


def test_dockerfile_single_runtime_needs_no_copy() -> None:
    assert "COPY --from" not in plan_for("dependencies: [python]\n").image.dockerfile


def test_package_name_with_a_newline_is_rejected() -> None:
    with pytest.raises(ConfigError):
        plan_for('dependencies: [python, "pip:requests\\n@1"]\n')


# --- services ----------------------------------------------------------------------------------


def test_service_specs() -> None:
    plan = plan_for("dependencies: [postgres@16, ollama]\nservices:\n  ollama:\n    models: [llama3.2:1b]\n"
                    "    memory: 1024\n    provision_timeout: 600\n")
    postgres, ollama = service(plan, "postgres"), service(plan, "ollama")
    assert postgres.image == "postgres:16" and postgres.image_overridden is False
    assert postgres.version == "16"
    assert postgres.port == 5432
    assert postgres.wait is True
    assert postgres.ready_timeout == 60
    assert postgres.memory_mb is None
    assert postgres.provision is None
    assert postgres.probe.expect == "1"
    assert ollama.image == "ollama/ollama:0.18.1"
    assert ollama.memory_mb == 1024
    assert ollama.provision is not None
    assert ollama.provision.items == ("llama3.2:1b",)
    assert ollama.provision.command == ("ollama", "pull", "{item}")
    assert ollama.provision.cache_path == "/root/.ollama"
    assert ollama.provision.timeout == 600


def test_empty_models_means_no_provision_step() -> None:
    plan = plan_for("dependencies: [ollama]\nservices:\n  ollama:\n    models: []\n")
    assert service(plan, "ollama").provision is None


def test_service_overrides_reach_the_plan() -> None:
    plan = plan_for("dependencies: [postgres]\nservices:\n  postgres:\n    wait: false\n    ready_timeout: 5\n"
                    "    memory: 256\n")
    postgres = service(plan, "postgres")
    assert (postgres.wait, postgres.ready_timeout, postgres.memory_mb) == (False, 5, 256)


def test_image_override_appears_in_the_plan_and_its_renderings() -> None:
    plan = plan_for("dependencies: [redis]\nservices:\n  redis:\n    image: registry.example.com/cache/redis:7.2\n")
    redis = service(plan, "redis")
    assert redis.image == "registry.example.com/cache/redis:7.2"
    assert redis.image_overridden is True
    assert plan.to_dict()["services"][0]["image"] == "registry.example.com/cache/redis:7.2"
    assert "registry.example.com/cache/redis:7.2  (image from services.redis.image)" in render_plan(plan)


def test_services_appear_in_declaration_order() -> None:
    plan = plan_for("dependencies: [redis, git, postgres, ministack]\n")
    assert [s.name for s in plan.services] == ["redis", "postgres", "ministack"]


# --- the agent's environment -------------------------------------------------------------------


def test_agent_environment() -> None:
    passwords = Passwords()
    plan = plan_for("name: envtest\ndependencies: [postgres, ollama]\nenv: {APP: one, SHARED: config}\n",
                    passwords=passwords, env=("SHARED=cli", "EXTRA=x=y", "EMPTY="))
    env = dict(plan.env)
    assert env["MOAT_RUN_ID"] == plan.run_id
    assert env["MOAT_RUN_NAME"] == "envtest"
    assert env["MOAT_POSTGRES_URL"] == f"postgresql://postgres:{passwords.issued[0]}@postgres:5432/postgres"
    assert env["MOAT_OLLAMA_URL"] == "http://ollama:11434"
    assert env["APP"] == "one"
    assert env["SHARED"] == "cli"  # -e overrides the config's env
    assert env["EXTRA"] == "x=y"
    assert env["EMPTY"] == ""


def test_bare_e_copies_from_the_host_environment() -> None:
    plan = plan_for("", env=("TOKEN",), host_env={"TOKEN": "from-host", "OTHER": "no"})
    assert plan.env["TOKEN"] == "from-host"
    assert "OTHER" not in plan.env


def test_bare_e_for_an_unset_variable_is_an_error() -> None:
    with pytest.raises(UsageError, match="TOKEN is not set"):
        plan_for("", env=("TOKEN",), host_env={})


@pytest.mark.parametrize("item", ["=x", " A=x", "", "A B=x", "A\tB=x"])
def test_malformed_e_is_an_error(item: str) -> None:
    with pytest.raises(UsageError, match="invalid -e"):
        plan_for("", env=(item,))


@pytest.mark.parametrize("variable", ["MOAT_RUN_ID", "MOAT_RUN_NAME", "MOAT_POSTGRES_URL", "MOAT_POSTGRES_PASSWORD"])
def test_moat_variables_cannot_be_set_with_e(variable: str) -> None:
    with pytest.raises(UsageError) as info:
        plan_for("dependencies: [postgres]\n", env=(f"{variable}=mine",))
    assert info.value.exit_code == EXIT_USAGE
    assert f"{variable} is set by moat" in info.value.message


@pytest.mark.parametrize("variable", ["MOAT_RUN_ID", "MOAT_REDIS_HOST"])
def test_moat_variables_cannot_be_set_in_config_env(variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_for(f"dependencies: [redis]\nenv:\n  OK: 1\n  {variable}: mine\n")
    problem = info.value.problems[0]
    assert problem.dotted == f"env.{variable}"
    assert problem.line == 4
    assert "set by moat" in problem.message


def test_moat_prefixed_variables_of_undeclared_services_are_allowed() -> None:
    plan = plan_for("env: {MOAT_POSTGRES_URL: mine}\n")
    assert plan.env["MOAT_POSTGRES_URL"] == "mine"


# --- command, runtime, limits ------------------------------------------------------------------


def test_command_from_the_command_line_wins() -> None:
    assert plan_for("command: [npm, start]\n", command=("bash", "-c", "echo hi")).command == ("bash", "-c", "echo hi")


def test_command_from_config() -> None:
    assert plan_for("command: [npm, start]\n", command=()).command == ("npm", "start")


def test_no_command_runs_bash_interactive_on_a_terminal() -> None:
    # As the Go tool does: no command given and none in moat.yaml is a shell.
    on_terminal = plan_for("", command=(), stdin_is_terminal=True)
    assert on_terminal.command == ("bash",) and on_terminal.interactive is True
    assert on_terminal.agent.tty and not on_terminal.agent.held
    piped = plan_for("", command=(), stdin_is_terminal=False)
    assert piped.command == ("bash",) and piped.interactive is False
    assert piped.agent.command == ("sh", "-c", 'read -r _ || exit 125; exec "$0" "$@" </dev/null', "bash")
    assert plan_for("", command=(), interactive=False, stdin_is_terminal=True).interactive is False


def test_runtime_choice() -> None:
    assert plan_for("").runtime == "docker"
    assert plan_for("", host_env={"MOAT_RUNTIME": "docker"}).runtime == "docker"
    with pytest.raises(UsageError, match="unknown runtime 'podman'"):
        plan_for("", host_env={"MOAT_RUNTIME": "podman"})
    with pytest.raises(UsageError, match="unknown runtime"):
        plan_for("", runtime="lxc")


def test_interactive_precedence() -> None:
    assert plan_for("interactive: true\n").interactive is True
    assert plan_for("interactive: true\n", interactive=False).interactive is False
    assert plan_for("", interactive=True).interactive is True
    assert plan_for("").interactive is False


def test_limits_from_container() -> None:
    plan = plan_for("container:\n  memory: 2048\n  cpus: 1.5\n  dns: [1.1.1.1]\n  ulimits:\n"
                    "    nproc: {soft: 10, hard: 20}\n    nofile: {soft: 1024, hard: 4096}\n")
    assert plan.limits.memory_mb == 2048
    assert plan.limits.cpus == 1.5
    assert plan.limits.dns == ("1.1.1.1",)
    assert dict(plan.limits.ulimits) == {"nofile": (1024, 4096), "nproc": (10, 20)}
    empty = plan_for("")
    assert (empty.limits.memory_mb, empty.limits.cpus, empty.limits.dns) == (None, None, ())


def test_infinite_cpus_is_rejected() -> None:
    error = config_error("container:\n  cpus: .inf\n")
    assert [p.dotted for p in error.problems] == ["container.cpus"]


def test_runnable_reference_plans() -> None:
    plan = plan_for(RUNNABLE, command=())
    assert plan.name == "runnable"
    assert plan.command == ("bash", "-lc", "pytest -q")
    assert [s.name for s in plan.services] == ["postgres", "mysql", "redis", "ollama", "ministack"]
    assert plan.env["MOAT_POSTGRES_USER"] == "app"
    assert plan.env["MOAT_MYSQL_DB"] == "shop"
    assert plan.env["APP_ENV"] == "test"
    assert plan.image.base_image == "python:3.12-slim"


# --- passwords and masking ---------------------------------------------------------------------

ALL_AUTH = ("dependencies: [postgres, mysql, redis, ollama]\n"
            "services:\n  ollama:\n    models: [llama3.2:1b]\n")


def _warm_secrets(plan: Plan) -> set[str]:
    """What a warm start adds to the secrets: each template's throwaway password and the statements
    that set the run's credentials."""
    found: set[str] = set()
    for spec in plan.services:
        if spec.warm is not None:
            found |= {spec.warm.template_password, *spec.warm.rekey.secrets}
    return found


def test_fresh_password_per_service_per_run() -> None:
    one, two = plan_for(ALL_AUTH), plan_for(ALL_AUTH)
    run_secrets = one.secrets - _warm_secrets(one)
    assert len(run_secrets) == 3
    assert one.secrets.isdisjoint(two.secrets)
    for secret in run_secrets | (two.secrets - _warm_secrets(two)):
        assert PASSWORD_SHAPE.fullmatch(secret)
    passwords = {one.env[f"MOAT_{n}_PASSWORD"] for n in ("POSTGRES", "MYSQL", "REDIS")}
    assert passwords == run_secrets
    # postgres and mysql start warm: their templates' passwords are secrets too, and no run's.
    templates = {s.warm.template_password for s in one.services if s.warm is not None}
    assert len(templates) == 2 and templates.isdisjoint(passwords)


def test_probe_carries_the_password_in_env_not_argv() -> None:
    passwords = Passwords()
    plan = plan_for(ALL_AUTH, passwords=passwords)
    pg, my, rd = passwords.issued
    assert service(plan, "postgres").probe.env["PGPASSWORD"] == pg
    assert service(plan, "mysql").probe.env["MYSQL_PWD"] == my
    assert service(plan, "redis").probe.env["REDISCLI_AUTH"] == rd
    for spec in plan.services:
        assert not any(p in arg for p in passwords.issued for arg in spec.probe.command)
    for spec in plan.services:  # no password on any command line: `docker inspect` and `ps` show them
        assert not any(p in arg for p in passwords.issued for arg in spec.command or ())


def _assert_nothing_leaks(output: str, secrets: list[str]) -> None:
    from urllib.parse import quote

    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote(secret), shlex.quote(secret), json.dumps(secret)[1:-1]}:
            assert form not in output, f"secret leaked as {form!r}"
    assert not PASSWORD_SHAPE.search(output)


def test_to_dict_masks_every_password() -> None:
    passwords = Passwords()
    plan = plan_for(ALL_AUTH, passwords=passwords)
    data = plan.to_dict()
    dumped = json.dumps(data)
    _assert_nothing_leaks(dumped, passwords.issued)
    assert data["env"]["MOAT_POSTGRES_PASSWORD"] == MASK
    assert data["env"]["MOAT_POSTGRES_URL"] == f"postgresql://postgres:{MASK}@postgres:5432/postgres"
    assert data["env"]["MOAT_REDIS_URL"] == f"redis://default:{MASK}@redis:6379"
    redis = next(s for s in data["services"] if s["name"] == "redis")
    assert redis["env"]["REDIS_PASSWORD"] == MASK
    assert redis["readiness"]["env"]["REDISCLI_AUTH"] == MASK
    mysql = next(s for s in data["services"] if s["name"] == "mysql")
    assert mysql["env"]["MYSQL_ROOT_PASSWORD"] == MASK
    # Masking is for output only: the plan itself still carries what the runtime needs.
    assert plan.env["MOAT_POSTGRES_PASSWORD"] == passwords.issued[0]


def test_dry_run_text_masks_every_password() -> None:
    passwords = Passwords()
    plan = plan_for(ALL_AUTH, passwords=passwords)
    text = render_plan(plan)
    _assert_nothing_leaks(text, passwords.issued)
    assert f"MOAT_MYSQL_URL=mysql://root:{MASK}@mysql:3306/moat" in text
    assert f"REDIS_PASSWORD={MASK}" in text
    assert "Dockerfile" in text and plan.run_id in text


AWKWARD = ("dependencies: [postgres, mysql, redis]\nservices:\n"
           "  postgres:\n    env: {POSTGRES_PASSWORD: 'p@ss:w/o rd%?#', POSTGRES_USER: 'al ice'}\n"
           "  mysql:\n    env: {MYSQL_ROOT_PASSWORD: 'p@ss:w/o rd%?#'}\n"
           "  redis:\n    env: {REDIS_PASSWORD: 'p@ss:w/o rd%?#'}\n")


def test_awkward_user_passwords_are_masked_in_every_form() -> None:
    plan = plan_for(AWKWARD)
    assert AWKWARD_PASSWORD in plan.secrets
    assert plan.env["MOAT_POSTGRES_URL"] == "postgresql://al%20ice:p%40ss%3Aw%2Fo%20rd%25%3F%23@postgres:5432/al%20ice"
    dumped = json.dumps(plan.to_dict())
    text = render_plan(plan)
    for output in (dumped, text):
        _assert_nothing_leaks(output, [AWKWARD_PASSWORD])
    assert f"postgresql://al%20ice:{MASK}@postgres:5432/al%20ice" in dumped
    assert f"redis://default:{MASK}@redis:6379" in text


# --- agent identity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invoker", "owner", "expected"),
    [
        ((1000, 1000), (0, 0), (1000, 1000)),  # a user who is not root runs as themself
        ((1234, 50), (1000, 1000), (1234, 50)),
        ((0, 0), (1000, 1001), (1000, 1001)),  # root (CI, sudo): the workspace's owner
        ((0, 0), (0, 0), (0, 0)),  # a root-owned workspace: root, confined (see below)
    ],
)
def test_agent_identity(invoker: tuple[int, int], owner: tuple[int, int], expected: tuple[int, int]) -> None:
    identity = agent_identity(invoker, owner)
    assert (identity.uid, identity.gid) == expected


def test_a_root_agent_has_no_capabilities_and_cannot_gain_any() -> None:
    plan = plan_for("", identity=Identity(0, 0))
    assert plan.agent.user == "0:0"
    assert plan.agent.cap_drop == ("ALL",) and plan.agent.no_new_privileges
    lines = plan.image.dockerfile.rstrip().splitlines()
    assert "useradd" not in plan.image.dockerfile
    assert lines[-3:] == ["ENV HOME=/root", "USER 0:0", "WORKDIR /workspace"]


def test_every_agent_drops_capabilities() -> None:
    plan = plan_for("", identity=Identity(1000, 1000))
    assert plan.agent.user == "1000:1000" and plan.agent.cap_drop == ("ALL",) and plan.agent.no_new_privileges


def test_the_sandbox_never_runs_a_root_agent() -> None:
    with pytest.raises(UsageError, match="will not run the agent as root") as info:
        plan_for("", identity=Identity(0, 0), runtime="sandbox")
    assert "chown" in (info.value.hint or "") and "--runtime docker" in (info.value.hint or "")


def test_plan_records_workspace_and_config_file() -> None:
    plan = plan_for("name: x\n")
    assert plan.workspace == WORKSPACE
    assert plan.config_file == Path("/work/space/moat.yaml")
    data = plan.to_dict()
    assert data["workspace"] == str(WORKSPACE)
    assert data["config_file"] == "/work/space/moat.yaml"


@pytest.mark.parametrize("password", ['pa"ss\\wo\'rd', "ü-ß 密码", "a'b\"c\\d$e`f"])
def test_passwords_with_quotes_and_non_ascii_are_masked(password: str) -> None:
    quoted = json.dumps(password)  # a valid YAML double-quoted scalar
    plan = plan_for(f"dependencies: [postgres, redis]\nservices:\n"
                    f"  postgres:\n    env: {{POSTGRES_PASSWORD: {quoted}}}\n"
                    f"  redis:\n    env: {{REDIS_PASSWORD: {quoted}}}\n")
    assert plan.env["MOAT_POSTGRES_PASSWORD"] == password
    assert service(plan, "redis").env["REDIS_PASSWORD"] == password
    for output in (json.dumps(plan.to_dict()), json.dumps(plan.to_dict(), indent=2, ensure_ascii=False),
                   render_plan(plan)):
        _assert_nothing_leaks(output, [password])
        assert MASK in output
