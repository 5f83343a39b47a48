"""Warm services on a real engine and in the sandbox: a run whose agent finished leaves a template of
each service's initialised data; the next run starts from it, with credentials of its own, and none of
the first run's data."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.helpers import only_run, run_moat, runs, write_workspace

pytestmark = pytest.mark.engine


@pytest.fixture(params=["docker", "sandbox"])
def runtime(request: pytest.FixtureRequest) -> str:
    """Each runtime, with what it needs (the engine's images; the host's servers)."""
    request.getfixturevalue("engine" if request.param == "docker" else "sandbox")
    return str(request.param)

CONFIG = """\
name: warm
dependencies: [psql, mysql-client, postgres, mysql]
services:
  postgres:
    image: moat-test/postgres:latest
  mysql:
    image: moat-test/mysql:latest
command: [bash, check.sh]
"""

# Writes a row in each service; says whether the previous run's row is there; and tries the
# template's password (given as TEMPLATE_PG / TEMPLATE_MY), which must be refused.
CHECK = """\
set -u
psql "$MOAT_POSTGRES_URL" -v ON_ERROR_STOP=1 -q -c "CREATE TABLE IF NOT EXISTS marks (n int)"
echo "postgres rows before: $(psql "$MOAT_POSTGRES_URL" -tAc 'SELECT count(*) FROM marks')"
psql "$MOAT_POSTGRES_URL" -q -c "INSERT INTO marks VALUES (1)"
export MYSQL_PWD="$MOAT_MYSQL_PASSWORD"
mysql -h "$MOAT_MYSQL_HOST" -u "$MOAT_MYSQL_USER" "$MOAT_MYSQL_DB" -e "CREATE TABLE IF NOT EXISTS marks (n int)"
echo "mysql rows before: $(mysql -h "$MOAT_MYSQL_HOST" -u "$MOAT_MYSQL_USER" -N -B "$MOAT_MYSQL_DB" \\
  -e 'SELECT count(*) FROM marks')"
mysql -h "$MOAT_MYSQL_HOST" -u "$MOAT_MYSQL_USER" "$MOAT_MYSQL_DB" -e "INSERT INTO marks VALUES (1)"
if [ -n "${TEMPLATE_PG:-}" ]; then
  if PGPASSWORD="$TEMPLATE_PG" PGCONNECT_TIMEOUT=3 psql -h "$MOAT_POSTGRES_HOST" -U "$MOAT_POSTGRES_USER" \\
       -d "$MOAT_POSTGRES_DB" -tAc 'SELECT 1' >/dev/null 2>&1; then echo "postgres: template password ACCEPTED"
  else echo "postgres: template password refused"; fi
  if MYSQL_PWD="$TEMPLATE_MY" mysql -h "$MOAT_MYSQL_HOST" -u "$MOAT_MYSQL_USER" -N -B -e 'SELECT 1' \\
       >/dev/null 2>&1; then echo "mysql: template password ACCEPTED"
  else echo "mysql: template password refused"; fi
fi
"""

POSTGRES_ONLY = """\
dependencies: [psql, postgres]
services:
  postgres:
    image: moat-test/postgres:latest
command: [sh, -c, 'psql "$MOAT_POSTGRES_URL" -tAc "SELECT 6*7"']
"""


@pytest.fixture
def warm_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A template cache of this test's own (the suite shares one otherwise)."""
    path = tmp_path / "warm-cache"
    monkeypatch.setenv("MOAT_WARM_CACHE", str(path))
    return path


def _templates(cache: Path) -> dict[str, Path]:
    return {meta.parent.parent.name: meta.parent for meta in cache.glob("*/*/meta.json")}


def _warm_flags(home: Path, run_id: str) -> dict[str, bool]:
    run = next(r for r in runs(home) if r["id"] == run_id)
    return {s["name"]: s.get("warm") for s in run["services"]}


def test_a_run_starts_warm_from_the_template_the_last_one_left(runtime: str, moat_home: Path, warm_cache: Path,
                                                                 tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", CONFIG, {"check.sh": CHECK})
    first = run_moat(["run", "--runtime", runtime, str(workspace)])
    assert first.code == 0, first.output
    assert "postgres rows before: 0" in first.stdout and "mysql rows before: 0" in first.stdout
    assert "postgres's warm template made" in first.stderr and "mysql's warm template made" in first.stderr
    first_run = only_run(moat_home)
    assert _warm_flags(moat_home, first_run["id"]) == {"postgres": False, "mysql": False}

    templates = _templates(warm_cache)
    assert sorted(templates) == ["mysql", "postgres"]
    for directory in templates.values():
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for file in directory.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    metas = {name: json.loads((d / "meta.json").read_text()) for name, d in templates.items()}
    # The template's password is its own, and is shown nowhere.
    for meta in metas.values():
        assert meta["password"] not in json.dumps(first_run) and meta["password"] not in first.output

    second = run_moat(["run", "--runtime", runtime, "-e", f"TEMPLATE_PG={metas['postgres']['password']}",
                       "-e", f"TEMPLATE_MY={metas['mysql']['password']}", str(workspace)])
    assert second.code == 0, second.output
    # A fresh template: the first run's rows are not there.
    assert "postgres rows before: 0" in second.stdout and "mysql rows before: 0" in second.stdout
    # The run's own credentials were set before it counted as ready; the template's no longer work.
    assert "postgres: template password refused" in second.stdout
    assert "mysql: template password refused" in second.stdout
    second_id = next(r["id"] for r in runs(moat_home) if r["id"] != first_run["id"])
    assert _warm_flags(moat_home, second_id) == {"postgres": True, "mysql": True}
    assert "warm template made" not in second.stderr  # made once


def test_a_template_that_does_not_start_is_dropped_and_the_service_starts_afresh(
        runtime: str, moat_home: Path, warm_cache: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", POSTGRES_ONLY)
    assert run_moat(["run", "--runtime", runtime, str(workspace)]).code == 0
    (template,) = _templates(warm_cache).values()
    (template / "0.tar").write_bytes(b"not a tar archive")

    result = run_moat(["run", "--runtime", runtime, str(workspace)])
    assert result.code == 0, result.output
    assert "42" in result.stdout
    assert "did not start from its warm template, which is removed; starting it afresh" in result.stderr
    # Made again at its end, whole.
    (again,) = _templates(warm_cache).values()
    assert (again / "0.tar").stat().st_size > 1_000_000


def test_warm_false_starts_afresh_and_makes_no_template(engine: object, moat_home: Path, warm_cache: Path,
                                                         tmp_path: Path) -> None:
    config = POSTGRES_ONLY.replace("latest\n", "latest\n    warm: false\n")
    workspace = write_workspace(tmp_path / "ws", config)
    for _ in range(2):
        result = run_moat(["run", str(workspace)])
        assert result.code == 0, result.output
        assert "42" in result.stdout
    assert _templates(warm_cache) == {}
    assert all("warm" not in s for r in runs(moat_home) for s in r["services"])


def test_cache_list_shows_templates_and_clean_removes_them(engine: object, moat_home: Path, warm_cache: Path,
                                                           tmp_path: Path) -> None:
    config = ("dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n"
              "command: ['true']\n")
    workspace = write_workspace(tmp_path / "ws", config)
    assert run_moat(["run", str(workspace)]).code == 0
    listed = run_moat(["cache", "list", "--json"])
    assert listed.code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert entry["service"] == "postgres" and entry["kind"] == "warm-template" and entry["size_bytes"] > 1_000_000
    cleaned = run_moat(["cache", "clean", "-f", "postgres"])
    assert cleaned.code == 0, cleaned.output
    assert "removed warm templates" in cleaned.stdout
    assert _templates(warm_cache) == {}
    assert run_moat(["cache", "list"]).stdout.strip() == "The cache is empty."
