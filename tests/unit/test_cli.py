"""The ``moat`` command line, driven through ``moat.cli.main.main`` as the console script calls it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moat import __version__
from moat.cli.main import main
from moat.constants import MASK
from moat.plan.build import build_plan
from tests.unit.support import AWKWARD_PASSWORD, CATALOG, FULL_REFERENCE, PASSWORD_SHAPE, RUNNABLE, Passwords


def moat(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(workspace: Path, text: str, name: str = "moat.yaml") -> Path:
    (workspace / name).write_text(text)
    return workspace


# --- top level ---------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "--version")
    assert code == 0
    assert out.strip() == f"moat, version {__version__}"


def test_version_command_prints_as_the_go_tool_does(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "version")
    assert code == 0
    assert out == f"moat {__version__}\n"
    _, listed, _ = moat(capsys, "--help")
    assert re.search(r"^\s+version\s+Print the version of moat\.$", listed, re.M)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    code, out, _ = moat(capsys, flag)
    assert code == 0
    assert "Usage: moat" in out
    assert re.search(r"^\s+run\s+\S", out, re.M)
    assert re.search(r"^\s+deps\s+\S", out, re.M)
    assert "--verbose" in out


def test_no_arguments_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = moat(capsys)
    assert code == 2  # a usage problem, but a helpful one: the full help with the command list
    assert "Usage: moat" in out + err
    assert re.search(r"^\s+run\s+\S", out + err, re.M)


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = moat(capsys, "frobnicate")
    assert code == 2
    assert "No such command 'frobnicate'" in err
    assert "Traceback" not in err


# --- moat deps ---------------------------------------------------------------------------------


def test_deps_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "deps", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "DEFAULT", "VERSIONS", "DESCRIPTION"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == [*CATALOG.names(), "cargo:", "go:", "npm:", "pip:", "uv:", "docker:host"]
    postgres = next(line for line in lines if line.startswith("postgres "))
    assert "service" in postgres and "15, 16, 17" in postgres


def test_deps_list_by_type(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "deps", "list", "--type", "service")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["ministack", "mysql", "ollama", "postgres", "redis"]


def test_deps_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "deps", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["python"] == {"name": "python", "type": "runtime", "default": "3.11",
                                 "versions": ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"],
                                 "description": by_name["python"]["description"]}
    assert by_name["go"]["versions"] == [] and by_name["go"]["default"] == "1.25"
    assert by_name["pip:"]["type"] == "dynamic"
    assert by_name["git"]["type"] == "tool"


@pytest.mark.parametrize(("kind", "expected"), [
    ("runtime", ["go", "node", "python"]),
    ("tool", ["aws", "bat", "bats", "curl", "fd", "git", "jq", "make", "mysql-client", "protoc", "psql", "redis-cli",
              "sqlite3"]),
    ("github-binary", ["act", "buf", "bun", "fzf", "gh", "golangci-lint", "goreleaser", "lazygit", "opentofu",
                       "ripgrep", "sqlc", "task", "terragrunt", "uv"]),
    ("dynamic", ["cargo:", "go:", "npm:", "pip:", "uv:"]),
])
def test_deps_list_json_by_type(capsys: pytest.CaptureFixture[str], kind: str, expected: list[str]) -> None:
    code, out, _ = moat(capsys, "deps", "list", "--type", kind, "--json")
    assert code == 0
    assert [r["name"] for r in json.loads(out)] == expected


def test_deps_list_rejects_an_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = moat(capsys, "deps", "list", "--type", "database")
    assert code == 2
    assert "database" in err


def test_deps_info_postgres_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "deps", "info", "postgres", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["image"] == "postgres"
    assert data["versions"] == ["15", "16", "17"]
    assert data["default"] == "17"
    assert data["port"] == 5432
    assert data["variables"] == ["MOAT_POSTGRES_HOST", "MOAT_POSTGRES_PORT", "MOAT_POSTGRES_USER",
                                 "MOAT_POSTGRES_DB", "MOAT_POSTGRES_PASSWORD", "MOAT_POSTGRES_URL"]
    assert "provisions" in data and data["provisions"] is None


def test_deps_info_ollama_json_has_provisions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "deps", "info", "ollama", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["provisions"]["key"] == "models"
    assert data["provisions"]["command"] == ["ollama", "pull", "{item}"]
    assert data["provisions"]["cache_path"] == "/root/.ollama"
    assert data["variables"] == ["MOAT_OLLAMA_HOST", "MOAT_OLLAMA_PORT", "MOAT_OLLAMA_URL"]


def test_deps_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = moat(capsys, "deps", "info", "ollama")
    assert code == 0
    assert "Image:" in out and "ollama/ollama" in out
    assert "services.ollama.models: list of models" in out
    assert "- ollama@0.18.1" in out


@pytest.mark.parametrize(("name", "field", "value"), [("python", "base_image", "python:{version}-slim"),
                                                      ("psql", "apt_package", "postgresql-client"),
                                                      ("pip:", "requires", "python")])
def test_deps_info_other_kinds(capsys: pytest.CaptureFixture[str], name: str, field: str, value: str) -> None:
    code, out, _ = moat(capsys, "deps", "info", name, "--json")
    assert code == 0
    assert json.loads(out)[field] == value


@pytest.mark.parametrize(("typo", "suggestion"), [("postgress", "postgres"), ("nodejs", "node")])
def test_deps_info_unknown(capsys: pytest.CaptureFixture[str], typo: str, suggestion: str) -> None:
    code, out, err = moat(capsys, "deps", "info", typo)
    assert code == 2
    assert out == ""
    assert f"unknown dependency '{typo}' — did you mean '{suggestion}'?" in err
    assert "Traceback" not in err


# --- moat run --dry-run ------------------------------------------------------------------------


def test_dry_run_text(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "name: demo\ndependencies: [python, postgres]\n")
    code, out, err = moat(capsys, "run", str(workspace), "--dry-run", "--", "pytest", "-q", "--maxfail=1")
    assert code == 0, err
    assert out.startswith("Run plan (dry run: nothing was started)")
    assert re.search(r"run\s+run_[0-9a-f]{12}\s+name demo", out)
    assert f"workspace  {workspace.resolve()}" in out
    assert "Command  pytest -q --maxfail=1" in out
    assert "postgres:17" in out
    assert "FROM python:3.11-slim" in out


def test_dry_run_json(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "dependencies: [redis]\nenv: {FROM_CONFIG: one, OVERRIDDEN: config}\n")
    code, out, err = moat(capsys, "run", str(workspace), "--dry-run", "--json", "-e", "OVERRIDDEN=cli",
                          "-e", "NEW=two", "--name", "my-run", "--", "ls", "-la", "--", "-v")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["name"] == "my-run"
    assert plan["command"] == ["ls", "-la", "--", "-v"]  # after the first '--' nothing is parsed
    assert plan["env"]["FROM_CONFIG"] == "one"
    assert plan["env"]["OVERRIDDEN"] == "cli"
    assert plan["env"]["NEW"] == "two"
    assert plan["env"]["MOAT_RUN_NAME"] == "my-run"
    assert re.fullmatch(r"run_[0-9a-f]{12}", plan["run_id"])
    assert re.fullmatch(r"moat/run:[0-9a-f]{16}", plan["image"]["tag"])
    assert plan["workspace"] == str(workspace.resolve())
    assert plan["services"][0]["name"] == "redis"


def test_dry_run_bare_e_copies_the_host_variable(capsys: pytest.CaptureFixture[str], workspace: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAT_TEST_SETTING", "from-host")
    code, out, _ = moat(capsys, "run", str(workspace), "--dry-run", "--json", "-e", "MOAT_TEST_SETTING", "--", "x")
    assert code == 0
    assert json.loads(out)["env"]["MOAT_TEST_SETTING"] == "from-host"


def test_credential_variables_are_masked_wherever_they_come_from(capsys: pytest.CaptureFixture[str],
                                                                   workspace: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Passwords the catalog does not generate: a second MySQL user's, the agent's own API token.
    write(workspace, "dependencies: [mysql]\nservices:\n  mysql:\n    env:\n      MYSQL_USER: bob\n"
                     "      MYSQL_PASSWORD: bobs-secret-pw\nenv:\n  API_TOKEN: tok-1234567890\n")
    monkeypatch.setenv("GH_TOKEN", "ghp_fromthehostenv")
    for extra in ([], ["--json"]):
        code, out, err = moat(capsys, "run", str(workspace), "--dry-run", *extra, "-e", "GH_TOKEN",
                              "-e", "DB_PASSWORD=cli-given-pw", "--", "true")
        assert code == 0, err
        for secret in ("bobs-secret-pw", "tok-1234567890", "ghp_fromthehostenv", "cli-given-pw"):
            assert secret not in out
        assert "bob" in out  # a user name is not a secret


def test_dry_run_uses_the_config_command(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "command: [npm, start]\n")
    code, out, _ = moat(capsys, "run", str(workspace), "--dry-run", "--json")
    assert code == 0
    assert json.loads(out)["command"] == ["npm", "start"]


def test_dry_run_reads_agent_yaml(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "name: legacy\n", name="agent.yaml")
    code, out, _ = moat(capsys, "run", str(workspace), "--dry-run", "--json", "--", "true")
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "legacy"
    assert data["config_file"] == str(workspace.resolve() / "agent.yaml")


def test_dry_run_without_config(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    code, out, _ = moat(capsys, "run", str(workspace), "--dry-run", "--json", "--", "true")
    assert code == 0
    data = json.loads(out)
    assert data["config_file"] is None
    assert data["services"] == []
    assert data["image"]["base_image"] == "debian:bookworm-slim"


def test_dry_run_defaults_to_the_current_directory(capsys: pytest.CaptureFixture[str], workspace: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write(workspace, "name: here\n")
    monkeypatch.chdir(workspace)
    code, out, _ = moat(capsys, "run", "--dry-run", "--json", "--", "true")
    assert code == 0
    assert json.loads(out)["name"] == "here"


def test_dry_run_runnable_reference(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, RUNNABLE)
    code, out, err = moat(capsys, "run", str(workspace), "--dry-run", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [s["name"] for s in data["services"]] == ["postgres", "mysql", "redis", "ollama", "ministack"]
    redis = data["services"][2]
    assert redis["image"] == "redis:7-alpine" and redis["image_overridden"] is True


# --- secrets never reach the output ------------------------------------------------------------

SECRETS_CONFIG = ("dependencies: [postgres, mysql, redis]\n"
                  "services:\n  redis:\n    env: {REDIS_PASSWORD: 'p@ss:w/o rd%?#'}\n")


@pytest.mark.parametrize("as_json", [False, True])
def test_dry_run_masks_passwords(capsys: pytest.CaptureFixture[str], workspace: Path,
                                 monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    passwords = Passwords()
    assert build_plan.__kwdefaults__ is not None
    monkeypatch.setitem(build_plan.__kwdefaults__, "new_password", passwords)
    write(workspace, SECRETS_CONFIG)
    args = ["run", str(workspace), "--dry-run", *(["--json"] if as_json else []), "--", "true"]
    code, out, err = moat(capsys, *args)
    assert code == 0, err
    assert len(passwords.issued) == 2  # postgres and mysql; redis's was chosen by the user
    for secret in [*passwords.issued, AWKWARD_PASSWORD, "p%40ss%3Aw%2Fo%20rd%25%3F%23"]:
        assert secret not in out + err
    assert MASK in out
    if as_json:
        assert json.loads(out)["env"]["MOAT_REDIS_URL"] == f"redis://default:{MASK}@redis:6379"


def test_dry_run_output_has_nothing_shaped_like_a_password(capsys: pytest.CaptureFixture[str],
                                                           workspace: Path) -> None:
    write(workspace, SECRETS_CONFIG)
    for extra in ([], ["--json"]):
        code, out, _ = moat(capsys, "run", str(workspace), "--dry-run", *extra, "--", "true")
        assert code == 0
        assert not PASSWORD_SHAPE.search(out), PASSWORD_SHAPE.search(out)
        assert out.count(MASK) >= 6


# --- errors ------------------------------------------------------------------------------------


def test_unknown_dependency_exits_2_with_the_location(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "name: x\ndependencies:\n  - postgress\n")
    code, out, err = moat(capsys, "run", str(workspace), "--dry-run", "--", "true")
    assert code == 2
    assert out == ""
    assert err.startswith("moat: moat.yaml: 1 problem found")
    assert f"{workspace.resolve() / 'moat.yaml'}:3:5: dependencies[0]: unknown dependency 'postgress'" in err
    assert "did you mean 'postgres'?" in err
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 5  # short


def test_verbose_shows_a_traceback(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "dependencies: [postgress]\n")
    for flag in ("-v", "--verbose"):
        code, _, err = moat(capsys, flag, "run", str(workspace), "--dry-run", "--", "true")
        assert code == 2
        assert "Traceback (most recent call last)" in err
        assert "ConfigError" in err
        assert "did you mean 'postgres'?" in err


def test_v_after_double_dash_belongs_to_the_command(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "dependencies: [postgress]\n")
    code, _, err = moat(capsys, "run", str(workspace), "--dry-run", "--", "python", "-v")
    assert code == 2
    assert "Traceback" not in err


def test_yaml_syntax_error_exits_2(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "name: x\ndependencies: [git\n")
    code, _, err = moat(capsys, "run", str(workspace), "--dry-run", "--", "true")
    assert code == 2
    assert re.search(r"moat\.yaml:\d+:\d+: \(top level\): YAML syntax error", err)
    assert "Traceback" not in err


def test_unsupported_feature_exits_2(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, FULL_REFERENCE)
    code, out, err = moat(capsys, "run", str(workspace), "--dry-run", "--", "true")
    assert code == 2
    assert out == ""
    assert "moat: not supported yet: network.keep_policy, mcp" in err
    assert "nothing was started" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("config", "args", "fragment"),
    [
        ("", ["--json", "--", "true"], "--json needs --dry-run"),
        ("", ["--dry-run", "-e", "MOAT_RUN_ID=x", "--", "true"], "MOAT_RUN_ID is set by moat"),
        ("", ["--dry-run", "-e", "NOT_SET_ANYWHERE_42", "--", "true"], "is not set in your environment"),
        ("", ["--dry-run", "--name", "bad\tname", "--", "true"], "invalid --name"),
        ("dependencies: [postgres]\nenv: {MOAT_POSTGRES_URL: x}\n", ["--dry-run", "--", "true"], "set by moat"),
        ("dependencies: [ollama]\nservices:\n  ollama:\n    models: ['x; rm -rf /']\n", ["--dry-run", "--", "true"],
         "invalid model name 'x; rm -rf /'"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(capsys: pytest.CaptureFixture[str], workspace: Path,
                                                 monkeypatch: pytest.MonkeyPatch, config: str, args: list[str],
                                                 fragment: str) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE_42", raising=False)
    if config:
        write(workspace, config)
    code, out, err = moat(capsys, "run", str(workspace), *args)
    assert code == 2
    assert fragment in err
    assert err.startswith("moat: ")
    assert "Traceback" not in err
    assert out == ""


def test_missing_workspace_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = moat(capsys, "run", str(tmp_path / "nowhere"), "--dry-run", "--", "true")
    assert code == 2
    assert "does not exist" in err


def test_unknown_option_exits_2(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    code, _, err = moat(capsys, "run", str(workspace), "--dry-rn", "--", "true")
    assert code == 2
    assert "No such option" in err


def test_null_network_rule_exits_2(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    write(workspace, "network:\n  rules:\n    - api.github.com: [null]\n")
    code, _, err = moat(capsys, "run", str(workspace), "--dry-run", "--", "true")
    assert "internal error" not in err
    assert code == 2
