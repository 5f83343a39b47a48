"""moat.services.contract: what each service gives the agent, and how it is checked for readiness."""

from __future__ import annotations

import string
from urllib.parse import unquote, urlsplit

import pytest

from moat.catalog import Service
from moat.plan.contract import (
    PASSWORD_LENGTH,
    Contract,
    build_url,
    contract,
    fill,
    generate_password,
)
from tests.unit.support import AWKWARD_PASSWORD, CATALOG

PW = "Secret0123456789Secret0123456789"


def entry(name: str) -> Service:
    found = CATALOG.service(name)
    assert found is not None
    return found


def terms(name: str, user_env: dict[str, str] | None = None, password: str = PW) -> Contract:
    service = entry(name)
    return contract(service, name, service.port, user_env or {}, lambda: password)


# --- passwords ---------------------------------------------------------------------------------


def test_generated_passwords_are_32_alphanumerics() -> None:
    alphabet = set(string.ascii_letters + string.digits)
    passwords = {generate_password() for _ in range(200)}
    assert len(passwords) == 200  # fresh every time
    for password in passwords:
        assert len(password) == PASSWORD_LENGTH == 32
        assert set(password) <= alphabet
    # Over 200 passwords every character class shows up: it is not, say, hex.
    joined = "".join(passwords)
    assert any(c.isupper() for c in joined) and any(c.islower() for c in joined) and any(c.isdigit() for c in joined)
    assert any(c in "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ" for c in joined)


def test_each_service_gets_its_own_fresh_password() -> None:
    first = {name: contract(entry(name), name, entry(name).port, {}).credentials["password"]
             for name in ("postgres", "mysql", "redis")}
    second = {name: contract(entry(name), name, entry(name).port, {}).credentials["password"]
              for name in ("postgres", "mysql", "redis")}
    assert len(set(first.values())) == 3
    assert all(first[n] != second[n] for n in first)


@pytest.mark.parametrize("name", ["ollama", "ministack"])
def test_services_without_authentication_get_no_password(name: str) -> None:
    calls: list[int] = []

    def new_password() -> str:
        calls.append(1)
        return PW

    result = contract(entry(name), name, entry(name).port, {}, new_password)
    assert calls == []
    assert result.secrets == frozenset()
    assert not any("PASSWORD" in k for k in result.agent_env)


# --- what each service gives the agent ---------------------------------------------------------


def test_postgres_defaults() -> None:
    result = terms("postgres")
    assert result.agent_env == {
        "MOAT_POSTGRES_HOST": "postgres",
        "MOAT_POSTGRES_PORT": "5432",
        "MOAT_POSTGRES_USER": "postgres",
        "MOAT_POSTGRES_DB": "postgres",
        "MOAT_POSTGRES_PASSWORD": PW,
        "MOAT_POSTGRES_URL": f"postgresql://postgres:{PW}@postgres:5432/postgres",
    }
    assert result.container_env["POSTGRES_PASSWORD"] == PW
    assert result.secrets == frozenset({PW})
    assert result.command is None


def test_mysql_defaults() -> None:
    result = terms("mysql")
    assert result.agent_env == {
        "MOAT_MYSQL_HOST": "mysql",
        "MOAT_MYSQL_PORT": "3306",
        "MOAT_MYSQL_USER": "root",
        "MOAT_MYSQL_DB": "moat",
        "MOAT_MYSQL_PASSWORD": PW,
        "MOAT_MYSQL_URL": f"mysql://root:{PW}@mysql:3306/moat",
    }
    assert result.container_env["MYSQL_ROOT_PASSWORD"] == PW
    assert result.container_env["MYSQL_DATABASE"] == "moat"


def test_redis_defaults() -> None:
    result = terms("redis")
    assert result.agent_env == {
        "MOAT_REDIS_HOST": "redis",
        "MOAT_REDIS_PORT": "6379",
        "MOAT_REDIS_PASSWORD": PW,
        "MOAT_REDIS_URL": f"redis://default:{PW}@redis:6379",
    }
    # The password reaches redis through its environment and stdin, never its command line.
    assert result.command is not None and result.command[:2] == ("sh", "-c")
    assert PW not in " ".join(result.command) and '"$REDIS_PASSWORD"' in result.command[2]
    assert result.container_env["REDIS_PASSWORD"] == PW


@pytest.mark.parametrize(("name", "port"), [("ollama", 11434), ("ministack", 4566)])
def test_http_services(name: str, port: int) -> None:
    result = terms(name)
    prefix = f"MOAT_{name.upper()}_"
    assert result.agent_env == {f"{prefix}HOST": name, f"{prefix}PORT": str(port),
                                f"{prefix}URL": f"http://{name}:{port}"}


def test_host_is_the_service_name() -> None:
    service = entry("postgres")
    result = contract(service, "db-main", 5432, {}, lambda: PW)
    assert result.agent_env["MOAT_POSTGRES_HOST"] == "db-main"
    assert "@db-main:5432/" in result.url
    assert "db-main" in result.probe_command


# --- readiness probes authenticate, with the password in the environment ------------------------


def test_postgres_probe() -> None:
    result = terms("postgres")
    assert result.probe_command[0] == "psql"
    assert "SELECT 1" in result.probe_command
    assert result.probe_command[result.probe_command.index("-U") + 1] == "postgres"
    assert result.probe_command[result.probe_command.index("-d") + 1] == "postgres"
    assert result.probe_command[result.probe_command.index("-h") + 1] == "postgres"
    assert result.probe_env["PGPASSWORD"] == PW
    assert not any(PW in arg for arg in result.probe_command)


def test_mysql_probe() -> None:
    result = terms("mysql")
    assert result.probe_command[0] == "mysql"
    assert result.probe_command[result.probe_command.index("-e") + 1] == "SELECT 1"
    assert result.probe_command[result.probe_command.index("-u") + 1] == "root"
    assert result.probe_command[-1] == "moat"
    assert result.probe_env["MYSQL_PWD"] == PW
    assert not any(PW in arg for arg in result.probe_command)


def test_redis_probe() -> None:
    result = terms("redis")
    assert result.probe_command[0] == "redis-cli"
    assert "PING" in result.probe_command
    assert result.probe_env["REDISCLI_AUTH"] == PW
    assert not any(PW in arg for arg in result.probe_command)
    # Not even the server's own command line holds it.
    assert not any(PW in arg for arg in result.command or ())


# --- percent-encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["postgres", "mysql", "redis"])
def test_awkward_password_is_percent_encoded_in_the_url(name: str) -> None:
    result = terms(name, password=AWKWARD_PASSWORD)
    url = result.agent_env[f"MOAT_{name.upper()}_URL"]
    parts = urlsplit(url)
    assert parts.hostname == name
    assert parts.port == entry(name).port
    assert parts.password is not None and unquote(parts.password) == AWKWARD_PASSWORD
    assert AWKWARD_PASSWORD not in url
    assert url.count("@") == 1 and "#" not in url and "?" not in url and " " not in url
    # The raw value is what the agent and the probe see.
    assert result.agent_env[f"MOAT_{name.upper()}_PASSWORD"] == AWKWARD_PASSWORD


def test_every_url_component_is_encoded() -> None:
    user_env = {"POSTGRES_USER": "us/er@x", "POSTGRES_DB": "my db?#", "POSTGRES_PASSWORD": AWKWARD_PASSWORD}
    result = terms("postgres", user_env)
    parts = urlsplit(result.url)
    assert unquote(parts.username or "") == "us/er@x"
    assert unquote(parts.password or "") == AWKWARD_PASSWORD
    assert unquote(parts.path.lstrip("/")) == "my db?#"
    assert parts.query == "" and parts.fragment == ""


def test_build_url_encodes_each_value() -> None:
    assert build_url("x://{a}/{b}", {"a": "a/b", "b": "%"}) == "x://a%2Fb/%25"


def test_fill_substitutes_literally() -> None:
    # A value that looks like a placeholder or a regex backreference is inserted as-is.
    assert fill("{a}-{b}", {"a": "{b}", "b": r"\1"}) == r"{b}-\1"
    with pytest.raises(KeyError):
        fill("{unknown}", {})


# --- user overrides are reflected everywhere ---------------------------------------------------


def test_postgres_user_and_db_override() -> None:
    result = terms("postgres", {"POSTGRES_USER": "alice", "POSTGRES_DB": "shop"})
    assert result.agent_env["MOAT_POSTGRES_USER"] == "alice"
    assert result.agent_env["MOAT_POSTGRES_DB"] == "shop"
    assert result.url == f"postgresql://alice:{PW}@postgres:5432/shop"
    assert result.probe_command[result.probe_command.index("-U") + 1] == "alice"
    assert result.probe_command[result.probe_command.index("-d") + 1] == "shop"
    assert result.container_env["POSTGRES_USER"] == "alice"
    assert result.container_env["POSTGRES_DB"] == "shop"


def test_postgres_db_follows_an_overridden_user_like_the_image_does() -> None:
    result = terms("postgres", {"POSTGRES_USER": "alice"})
    assert result.agent_env["MOAT_POSTGRES_DB"] == "alice"
    assert result.url.endswith("/alice")


@pytest.mark.parametrize(("name", "variable", "probe_variable"), [
    ("postgres", "POSTGRES_PASSWORD", "PGPASSWORD"),
    ("mysql", "MYSQL_ROOT_PASSWORD", "MYSQL_PWD"),
    ("redis", "REDIS_PASSWORD", "REDISCLI_AUTH"),
])
def test_password_override(name: str, variable: str, probe_variable: str) -> None:
    calls: list[int] = []

    def new_password() -> str:
        calls.append(1)
        return PW

    service = entry(name)
    result = contract(service, name, service.port, {variable: AWKWARD_PASSWORD}, new_password)
    assert calls == []  # nothing generated when the user chose
    assert result.credentials["password"] == AWKWARD_PASSWORD
    assert result.agent_env[f"MOAT_{name.upper()}_PASSWORD"] == AWKWARD_PASSWORD
    assert unquote(urlsplit(result.url).password or "") == AWKWARD_PASSWORD
    assert result.probe_env[probe_variable] == AWKWARD_PASSWORD
    assert result.container_env[variable] == AWKWARD_PASSWORD
    assert AWKWARD_PASSWORD in result.secrets  # still masked: it is a password
    if name == "redis":
        assert AWKWARD_PASSWORD not in " ".join(result.command or ())


def test_mysql_database_override() -> None:
    result = terms("mysql", {"MYSQL_DATABASE": "shop"})
    assert result.agent_env["MOAT_MYSQL_DB"] == "shop"
    assert result.url.endswith("/shop")
    assert result.probe_command[-1] == "shop"
    assert result.container_env["MYSQL_DATABASE"] == "shop"


def test_other_user_env_reaches_the_container_only() -> None:
    result = terms("postgres", {"POSTGRES_INITDB_ARGS": "--data-checksums"})
    # The user's arguments, and what keeps loopback closed to a wrong password (a run is a pod).
    assert result.container_env["POSTGRES_INITDB_ARGS"] == "--data-checksums --auth-host=scram-sha-256"
    assert terms("postgres", {}).container_env["POSTGRES_INITDB_ARGS"] == "--auth-host=scram-sha-256"
    # The user's own choice of how clients authenticate is theirs (review): nothing is added.
    assert terms("postgres", {"POSTGRES_INITDB_ARGS": "--auth-host=md5"}).container_env[
        "POSTGRES_INITDB_ARGS"] == "--auth-host=md5"
    assert "POSTGRES_INITDB_ARGS" not in terms("postgres", {"POSTGRES_HOST_AUTH_METHOD": "trust"}).container_env
    assert "POSTGRES_INITDB_ARGS" not in " ".join(result.agent_env)
