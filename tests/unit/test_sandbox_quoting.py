"""Values moat.yaml gives reach the sandbox's services quoted for the language they land in."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moat import quoting
from moat.plan.containers import ContainerSpec
from moat.runtime.sandbox import services
from moat.runtime.sandbox.starting import hosts


def redis_unquote(text: str) -> list[str]:
    """Redis's own reading of a config line (sdssplitargs), for double-quoted arguments."""
    args, at = [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}
    while at < len(text):
        if text[at] == " ":
            at += 1
            continue
        if text[at] != '"':
            end = text.find(" ", at)
            end = len(text) if end < 0 else end
            args.append(text[at:end])
            at = end
            continue
        at += 1
        out = []
        while text[at] != '"':
            if text[at] == "\\" and text[at + 1] == "x":
                out.append(chr(int(text[at + 2:at + 4], 16)))
                at += 4
            elif text[at] == "\\":
                out.append(simple.get(text[at + 1], text[at + 1]))
                at += 2
            else:
                out.append(text[at])
                at += 1
        at += 1
        assert at == len(text) or text[at] == " ", "a closing quote must be followed by a space"
        args.append("".join(out))
    return args


@given(st.text())
def test_redis_quoting_round_trips(value: str) -> None:
    assert redis_unquote(f"requirepass {quoting.redis(value)}") == ["requirepass", value]


def test_redis_config_from_the_containers_password() -> None:
    password = 'sp ace"quote\\back\nlogfile /etc/evil'
    config = services.redis_config({"REDIS_PASSWORD": password}, 6379)
    lines = config.splitlines()
    assert redis_unquote(lines[0]) == ["requirepass", password]  # one line: the newline is escaped
    assert [redis_unquote(line)[0] for line in lines[1:]] == ["bind", "port", "dir", "save", "appendonly",
                                                              "protected-mode", "daemonize"]
    assert redis_unquote(lines[4]) == ["save", ""]
    assert "requirepass" not in services.redis_config({}, 6379)


def test_mariadb_setup_quotes_every_value() -> None:
    sql = services.mariadb_setup({"MYSQL_ROOT_PASSWORD": "it's \\ a';DROP", "MYSQL_DATABASE": "my`db",
                                  "MYSQL_USER": "o'neil", "MYSQL_PASSWORD": "p'w"})
    assert "IDENTIFIED BY 'it\\'s \\\\ a\\';DROP';" in sql
    assert "CREATE DATABASE IF NOT EXISTS `my``db`;" in sql
    assert "CREATE USER IF NOT EXISTS 'o\\'neil'@'%' IDENTIFIED BY 'p\\'w';" in sql
    assert "GRANT ALL ON `my``db`.* TO 'o\\'neil'@'%';" in sql


def test_sql_strings_escape_control_characters() -> None:
    assert quoting.sql_string("a\0b\nc\x1a") == "'a\\0b\\nc\\Z'"
    assert quoting.pg_name('we"ird') == '"we""ird"'


def spec(env: dict[str, str], command: tuple[str, ...] | None = None, service: str = "postgres") -> ContainerSpec:
    return ContainerSpec(role="service", name=f"moat-{service}-run_x", image=service, labels={}, network="n",
                         env=env, command=command, service=service)


def recipe(name: str):  # type: ignore[no-untyped-def]
    from moat.catalog import load_catalog

    return load_catalog().service(name).sandbox  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "find_binary", lambda name, _recipe: f"/usr/bin/{name}")


def test_postgres_script_keeps_secrets_in_the_environment() -> None:
    program = services.program(recipe("postgres"), spec({"POSTGRES_USER": "us er", "POSTGRES_DB": "d$b",
                                                          "POSTGRES_PASSWORD": "s3cret"}), 5432, {})
    assert "s3cret" not in program.script
    assert '"$POSTGRES_PASSWORD"' in program.script
    assert shlex.quote("us er") in program.script
    assert program.env == {services.SETUP_VAR: 'CREATE DATABASE "d$b";'}
    assert program.script.splitlines()[-1].startswith("exec /usr/bin/postgres ")


def test_mariadb_and_redis_scripts_take_their_setup_from_the_environment() -> None:
    mariadb = services.program(recipe("mysql"), spec({"MYSQL_ROOT_PASSWORD": "s3cret"}, service="mysql"), 3306, {})
    assert "s3cret" not in mariadb.script and "s3cret" in mariadb.env[services.SETUP_VAR]
    assert f"unset {services.SETUP_VAR}" in mariadb.script and f"rm -f {services.SETUP_FILE}" in mariadb.script
    redis = services.program(recipe("redis"), spec({"REDIS_PASSWORD": "s3cret"}, service="redis"), 6379, {})
    assert "s3cret" not in redis.script and "s3cret" in redis.env[services.SETUP_VAR]
    assert redis.script.splitlines()[2] == "exec /usr/bin/redis-server - <<MOAT_EOF"


def test_ollama_uses_its_mounted_cache() -> None:
    program = services.program(recipe("ollama"), spec({}, service="ollama"), 11434,
                               {"/root/.ollama": "/run/moat/mnt/0"})
    assert program.env["OLLAMA_MODELS"] == "/run/moat/mnt/0/models"
    assert program.exec_env == {"OLLAMA_HOST": "127.0.0.1:11434"}


def test_hosts_resolve_every_name_to_loopback() -> None:
    assert hosts({"redis", "postgres"}).decode().splitlines()[-1] == "127.0.0.1\tpostgres redis"
