"""The examples, run through the CLI as a user runs them, with real clients in the agent container."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.helpers import WORKSPACE_UID, log_records, only_run, run_moat, write_workspace

pytestmark = pytest.mark.engine


def test_postgres_example_round_trips_rows(engine: object, moat_home: Path,
                                           example: Callable[[str], Path]) -> None:
    workspace = example("service-postgres")
    result = run_moat(["run", str(workspace)])
    assert result.code == 0, result.output
    # POSTGRES_DB: notes in services.postgres.env reaches the injected variables and the URL.
    assert "as postgres (db notes)" in result.stdout
    assert "rows in notes: 3" in result.stdout
    assert "1 | first note\n2 | second note\n3 | third note" in result.stdout
    run = only_run(moat_home)
    assert run["state"] == "exited" and run["exit_code"] == 0
    # The services.postgres.image override is what ran (postgres:17 cannot be pulled here).
    assert run["services"][0]["image"] == "moat-test/postgres:latest"
    assert (moat_home / "runs" / run["id"] / "services" / "postgres.log").read_text().strip()


def test_mysql_example_authenticates_and_queries(engine: object, moat_home: Path,
                                                 example: Callable[[str], Path]) -> None:
    result = run_moat(["run", str(example("service-mysql"))])
    assert result.code == 0, result.output
    assert "rows in tasks: 2" in result.stdout
    assert "1\twrite tests\n2\tship it" in result.stdout


def test_redis_example_authenticates(engine: object, moat_home: Path, example: Callable[[str], Path]) -> None:
    result = run_moat(["run", str(example("service-redis"))])
    assert result.code == 0, result.output
    assert "greeting: hello from the agent" in result.stdout
    assert "queue length: 3" in result.stdout
    assert "by url: PONG" in result.stdout  # redis-cli -u "$MOAT_REDIS_URL" authenticates


def test_multi_service_example_uses_all_three(engine: object, moat_home: Path,
                                              example: Callable[[str], Path]) -> None:
    result = run_moat(["run", str(example("multi-service"))])
    assert result.code == 0, result.output
    assert "postgres: 3 (sum of visits)" in result.stdout
    assert "mysql: 42 (6*7)" in result.stdout
    assert "redis: 5 (counter)" in result.stdout
    run = only_run(moat_home)
    assert sorted(s["name"] for s in run["services"]) == ["mysql", "postgres", "redis"]
    assert all(s["ready_seconds"] > 0 for s in run["services"])


def test_wrong_credentials_are_refused_by_each_service(engine: object, moat_home: Path,
                                                       example: Callable[[str], Path]) -> None:
    """The injected credentials are what authenticates: a wrong password is refused by all three."""
    workspace = example("multi-service")
    script = (
        'psql "postgresql://postgres:wrong@$MOAT_POSTGRES_HOST/postgres" -c "select 1" && echo PG-ACCEPTED;'
        'MYSQL_PWD=wrong mysql -h "$MOAT_MYSQL_HOST" -uroot -e "select 1" && echo MY-ACCEPTED;'
        'REDISCLI_AUTH=wrong redis-cli -h "$MOAT_REDIS_HOST" ping;'
        'REDISCLI_AUTH="$MOAT_REDIS_PASSWORD" redis-cli -h "$MOAT_REDIS_HOST" ping'
    )
    result = run_moat(["run", str(workspace), "--", "bash", "-c", script])
    assert result.code == 0, result.output
    assert "PG-ACCEPTED" not in result.stdout and "MY-ACCEPTED" not in result.stdout
    assert "password authentication failed" in result.stderr
    assert "Access denied" in result.stderr
    assert "WRONGPASS" in result.stderr  # redis-cli: AUTH failed
    assert result.stdout.split() == ["NOAUTH", "Authentication", "required.", "PONG"]


def test_agent_exit_code_is_returned(engine: object, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "dependencies: []\n")
    result = run_moat(["run", str(workspace), "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
    assert result.code == 7, result.output
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr
    run = only_run(moat_home)
    assert run["state"] == "exited" and run["exit_code"] == 7
    lines = [(r["stream"], r["line"]) for r in log_records(moat_home, run["id"]) if r["stream"] != "moat"]
    # Each stream keeps its own order; between two pipes there is none to keep.
    assert sorted(lines) == [("stderr", "err"), ("stdout", "out")]


def test_agent_runs_unprivileged_and_its_files_belong_to_the_workspace_user(
        engine: object, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: files\n")
    result = run_moat(["run", str(workspace), "--", "sh", "-c",
                       "id -u; id -g; pwd; echo written > made-by-agent.txt"])
    assert result.code == 0, result.output
    uid, gid, cwd = result.stdout.split()
    expected = WORKSPACE_UID if os.getuid() == 0 else os.getuid()
    assert int(uid) == expected != 0
    assert cwd == "/workspace"
    made = workspace / "made-by-agent.txt"
    assert made.read_text() == "written\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (int(uid), int(gid))


def test_a_root_owned_private_workspace_is_usable_by_a_root_agent_without_capabilities(
        engine: object, moat_home: Path, tmp_path: Path) -> None:
    # A CI job as root: `mktemp -d` gives a 0700 root-owned workspace. The agent used to run as uid
    # 1000 there and get "Permission denied"; it now runs as the owner (root) with no capability.
    if os.getuid() != 0:
        skip_or_fail("a root-owned workspace needs root")
    workspace = tmp_path / "private"
    workspace.mkdir(mode=0o700)
    (workspace / "input.txt").write_text("from the user\n")
    script = ("id -u; cat input.txt; echo out > output.txt; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status;"
              " chown 1234 output.txt 2>/dev/null && echo chown-worked || echo chown-refused")
    result = run_moat(["run", str(workspace), "--", "sh", "-c", script])
    assert result.code == 0, result.output
    lines = result.stdout.split("\n")
    assert lines[0] == "0" and lines[1] == "from the user"
    assert "CapEff:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines
    assert "chown-refused" in lines  # root without CAP_CHOWN: it owns root's files and nothing more
    made = workspace / "output.txt"
    assert made.read_text() == "out\n" and (made.stat().st_uid, made.stat().st_gid) == (0, 0)


def test_secrets_never_reach_the_run_directory(engine: object, moat_home: Path,
                                               example: Callable[[str], Path]) -> None:
    workspace = example("service-postgres")
    result = run_moat(["run", str(workspace), "--", "sh", "-c", 'echo "pw=$MOAT_POSTGRES_PASSWORD"'])
    assert result.code == 0, result.output
    password = result.stdout.strip().removeprefix("pw=")
    assert len(password) == 32 and password.isalnum()
    assert password not in result.stderr  # moat's own output
    run_dir = moat_home / "runs" / only_run(moat_home)["id"]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"metadata.json", "logs.jsonl", "Dockerfile", "postgres.log"}
    for path in files:  # a snapshot of the workspace too, read uncompressed
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".tar.gz") else path.read_bytes()
        assert password.encode() not in data, f"password leaked into {path}"
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    assert run_dir.stat().st_mode & 0o077 == 0
    assert any(r["line"] == "pw=****" for r in log_records(moat_home, run_dir.name))


def test_ollama_example_lists_models_and_gets_an_answer(engine: object, moat_home: Path,
                                                        example: Callable[[str], Path]) -> None:
    # examples/service-ollama, with the moat-test/ollama-standin image in place of ollama/ollama.
    result = run_moat(["run", str(example("service-ollama"))])
    assert result.code == 0, result.output
    assert "  qwen2.5-coder:1.5b  " in result.stdout
    answer = result.stdout.split("answer:\n", 1)[1]
    assert "Write a haiku about containers." in answer  # the stand-in echoes the prompt
    assert (moat_home / "cache/ollama/models/manifests/registry.ollama.ai/library/qwen2.5-coder/1.5b").is_file()


def test_redis_takes_a_password_with_spaces_quotes_and_backslashes(engine: object, moat_home: Path,
                                                                   tmp_path: Path) -> None:
    # Written into the server's configuration, quoted for it: never on its command line.
    password = 'two words "quoted" back\\slash'
    config = ("dependencies: [redis, redis-cli]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"
              f"    env: {{REDIS_PASSWORD: {json.dumps(password)}}}\n")
    script = ('REDISCLI_AUTH="$MOAT_REDIS_PASSWORD" redis-cli -h redis PING;'
              ' redis-cli --no-auth-warning -u "$MOAT_REDIS_URL" PING')
    result = run_moat(["run", str(write_workspace(tmp_path / "ws", config)), "--", "sh", "-c", script])
    assert result.code == 0, result.output
    assert result.stdout.split() == ["PONG", "PONG"]


def test_a_workspace_path_with_a_colon_mounts(engine: object, moat_home: Path, tmp_path: Path) -> None:
    # A bind given as "source:target:mode" took the ':' for a separator: the run failed after planning.
    workspace = write_workspace(tmp_path / "with:colon" / "ws:1", "name: colon\n")
    result = run_moat(["run", str(workspace), "--", "sh", "-c", "pwd; echo made > made.txt"])
    assert result.code == 0, result.output
    assert result.stdout.strip() == "/workspace" and (workspace / "made.txt").read_text() == "made\n"
