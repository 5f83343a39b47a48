"""Warm services, without an engine: what is planned, how templates are kept, and a run's course on
the fake runtime (made after an agent that finished, started from next time, dropped when broken)."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
from pathlib import Path

import pytest

from moat.cache.warm import WarmCache, template_key
from moat.errors import EngineError
from moat.plan.model import Plan
from moat.plan.warm import SANDBOX_DATA, scram_verifier, warm_root
from moat.runtime.base import ExecResult, ImageConfig
from moat.runtime.sandbox import services
from moat.services.warm import seeded
from tests.unit.fakes import FakeRuntime
from tests.unit.support import plan_for, service
from tests.unit.test_run_core import execute, make_plan

PG_MY = ("dependencies: [postgres, mysql]\n"
         "services:\n  postgres:\n    image: moat-test/postgres:latest\n  mysql:\n    image: moat-test/mysql:latest\n")


# --- planning --------------------------------------------------------------------------------------

def test_the_verifier_is_postgres_own_for_the_same_salt() -> None:
    # PostgreSQL 15 stored this for `PASSWORD 'pencil'` (SELECT rolpassword FROM pg_authid).
    salt = base64.b64decode("2nxpgxlT36kXrhebY16iGQ==")
    assert scram_verifier("pencil", salt) == (
        "SCRAM-SHA-256$4096:2nxpgxlT36kXrhebY16iGQ==$7ijSzPm6nRxGFO7E66CpOHLTy8kzppDEmI+BzDh+LGI="
        ":msTglS1LhqVePEHc/cj3GdD/SrzlGB+mb3B+hHZ3cDk=")


def test_postgres_and_mysql_plan_warm_with_a_throwaway_password_and_redis_does_not() -> None:
    plan = plan_for(PG_MY.replace("[postgres, mysql]", "[postgres, mysql, redis]"))
    pg, my, rd = service(plan, "postgres"), service(plan, "mysql"), service(plan, "redis")
    assert rd.warm is None and rd.cold_reason is None
    for spec, password_var in ((pg, "POSTGRES_PASSWORD"), (my, "MYSQL_ROOT_PASSWORD")):
        assert spec.warm is not None
        template = spec.warm.template
        assert template.env[password_var] == spec.warm.template_password != spec.env[password_var]
        assert template.network == "none" and template.tmpfs == ()  # its data outlives its stop
        assert template.labels["moat.role"] == "warm" and template.labels["moat.run-id"] == plan.run_id
        assert spec.warm.template_password in plan.secrets and spec.warm.rekey.secrets <= plan.secrets
        # The settings name no password, and the rekey's command line holds none either.
        assert spec.warm.template_password not in spec.warm.settings
        assert spec.env[password_var] not in spec.warm.settings
        assert spec.env[password_var] not in spec.warm.rekey.script
    # postgres is given the verifier, never the password; mysql's statement quotes it.
    assert pg.env["POSTGRES_PASSWORD"] not in pg.warm.rekey.env["MOAT_REKEY_SQL"]  # type: ignore[union-attr]
    assert "PASSWORD 'SCRAM-SHA-256$4096:" in pg.warm.rekey.env["MOAT_REKEY_SQL"]  # type: ignore[union-attr]


def test_mysql_statement_quotes_a_password_with_quotes_and_backslashes() -> None:
    text = PG_MY + "    env:\n      MYSQL_ROOT_PASSWORD: \"it's a \\\\ trap\"\n"
    sql = service(plan_for(text), "mysql").warm.rekey.env["MOAT_REKEY_SQL"]
    assert "IDENTIFIED BY 'it\\'s a \\\\ trap';" in sql


@pytest.mark.parametrize(("extra", "reason"), [
    ("    warm: false\n", None),
    ("    storage: disk\n", "storage: disk"),
    ("    wait: false\n", "wait: false"),
    ("    env:\n      MYSQL_USER: app\n      MYSQL_PASSWORD: app-secret\n", "other credentials (MYSQL_PASSWORD)"),
    ("    env:\n      MYSQL_ROOT_PASSWORD: pässword\n", "not ASCII"),
])
def test_what_makes_a_service_start_afresh(extra: str, reason: str | None) -> None:
    spec = service(plan_for(PG_MY + extra), "mysql")
    assert spec.warm is None
    if reason is None:
        assert spec.cold_reason is None  # the user's choice: nothing to explain
    else:
        assert reason in (spec.cold_reason or "")


def test_same_settings_same_key_and_the_sandbox_plans_its_own(tmp_path: Path) -> None:
    one, same = service(plan_for(PG_MY), "postgres").warm, service(plan_for(PG_MY), "postgres").warm
    assert one is not None and same is not None
    assert one.settings == same.settings  # the passwords differ, the settings do not
    # The sandbox's templates hold its own data directory, and are made in a network of their own.
    sandboxed = plan_for(PG_MY, runtime="sandbox")
    for spec in sandboxed.services:
        assert spec.warm is not None and spec.warm.data_paths == (SANDBOX_DATA,) == (services.DATA,)
        assert spec.warm.template_network == spec.warm.template.network != "none"
        assert "/var/run/postgresql" not in spec.warm.rekey.script  # its servers have no socket for others
        assert spec.warm.settings != service(plan_for(PG_MY), spec.name).warm.settings
    assert warm_root(tmp_path, {}) == tmp_path / "cache" / ".warm"
    assert warm_root(tmp_path, {"MOAT_WARM_CACHE": "/x/y"}) == Path("/x/y")


def test_each_version_and_image_override_has_templates_of_its_own() -> None:
    pg16 = service(plan_for("dependencies: [postgres@16]\n"), "postgres").warm
    pg17 = service(plan_for("dependencies: [postgres@17]\n"), "postgres").warm
    postgis = service(plan_for(PG_MY.replace("moat-test/postgres:latest", "postgis/postgis:17")), "postgres").warm
    plain = service(plan_for(PG_MY), "postgres").warm
    assert pg16 is not None and pg17 is not None and postgis is not None and plain is not None
    assert len({pg16.settings, pg17.settings, postgis.settings, plain.settings}) == 4


def test_mysql_statements_do_not_depend_on_the_servers_sql_mode_and_other_root_hosts_start_afresh() -> None:
    sql = service(plan_for(PG_MY), "mysql").warm.rekey.env["MOAT_REKEY_SQL"]  # type: ignore[union-attr]
    assert sql.startswith("SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '');")
    spec = service(plan_for(PG_MY + "    env:\n      MYSQL_ROOT_HOST: '172.%'\n"), "mysql")
    assert spec.warm is None and "MYSQL_ROOT_HOST" in (spec.cold_reason or "")
    # How postgres clients authenticate is a setting, not a credential.
    text = PG_MY.replace("moat-test/postgres:latest\n", "moat-test/postgres:latest\n    env:\n"
                         "      POSTGRES_HOST_AUTH_METHOD: md5\n")
    assert service(plan_for(text), "postgres").warm is not None


def test_a_relative_warm_cache_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert warm_root(Path("/h"), {"MOAT_WARM_CACHE": "rel"}) == tmp_path / "rel"


def test_postgres_settings_include_its_database(tmp_path: Path) -> None:
    text = PG_MY.replace("image: moat-test/postgres:latest\n", "image: moat-test/postgres:latest\n"
                         "    env:\n      POSTGRES_DB: shop\n")
    plain, shop = service(plan_for(PG_MY), "postgres").warm, service(plan_for(text), "postgres").warm
    assert plain is not None and shop is not None
    assert plain.settings != shop.settings


# --- the cache -------------------------------------------------------------------------------------

def _store(cache: WarmCache, key: str, data: bytes = b"tar") -> None:
    with cache.making("postgres", key) as mine:
        assert mine
        cache.store("postgres", key, [[data]], "template-pw", ("/var/lib/postgresql/data",), "sha256:1", "{}")


def test_a_stored_template_is_private_whole_and_found(tmp_path: Path) -> None:
    cache = WarmCache(tmp_path / "warm")
    key = template_key("{}", "sha256:1")
    assert cache.find("postgres", key) is None
    _store(cache, key)
    template = cache.find("postgres", key)
    assert template is not None and template.password == "template-pw"
    assert template.archive(0).read_bytes() == b"tar"
    assert stat.S_IMODE(template.path.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in template.path.iterdir()} == {0o600}
    # No staging directory is left beside it.
    assert [p.name for p in template.path.parent.iterdir()] == [key]


def test_a_failed_store_leaves_nothing(tmp_path: Path) -> None:
    cache = WarmCache(tmp_path / "warm")
    with cache.making("postgres", "k-1") as mine, pytest.raises(OSError):
        assert mine
        cache.store("postgres", "k-1", [iter([b"part"]), _Raising()], "pw", ("/a", "/b"), "i", "{}")
    assert cache.find("postgres", "k-1") is None
    assert list((tmp_path / "warm" / "postgres").iterdir()) == []


class _Raising:
    def __iter__(self) -> _Raising:
        return self

    def __next__(self) -> bytes:
        raise OSError("disk full")


def test_failures_remove_a_template_only_when_no_run_holds_it_and_twice_stop_warm_starts(tmp_path: Path) -> None:
    cache = WarmCache(tmp_path / "warm")
    key = template_key("{}", "sha256:1")
    _store(cache, key)
    with cache.using("postgres", key) as held:
        assert held is not None
        cache.failed("postgres", key)  # another run's failure: this one still holds it
        assert held.archive(0).exists()
    assert cache.failures("postgres", key) == 1
    with cache.using("postgres", key) as held:
        assert held is not None
    cache.failed("postgres", key)  # unheld now: removed, and the key is broken
    assert cache.find("postgres", key) is None and cache.broken("postgres", key)
    _store(cache, key)  # even when one is stored again, it is not used
    with cache.using("postgres", key) as held:
        assert held is None
    cache.remove()  # `moat cache clean`: tried again
    assert not cache.broken("postgres", key)
    cache.failed("postgres", key)
    cache.succeeded("postgres", key)
    assert cache.failures("postgres", key) == 0


def test_clean_keeps_a_template_being_stored_and_removes_one_killed_half_way(tmp_path: Path) -> None:
    cache = WarmCache(tmp_path / "warm")
    parent = tmp_path / "warm" / "postgres"
    parent.mkdir(parents=True)
    busy, dead = parent / ".k-busy.123.tmp", parent / ".k-dead.456.tmp"
    busy.mkdir()
    dead.mkdir()
    with cache.making("postgres", "k-busy") as mine:
        assert mine
        cache.remove()
        assert busy.is_dir() and not dead.exists()
    # A store of the key sweeps what a killed making of it left.
    (parent / ".k-1.999.tmp").mkdir()
    _store(cache, "k-1")
    assert not (parent / ".k-1.999.tmp").exists()


def test_a_template_being_made_is_not_used_and_one_in_use_is_not_removed(tmp_path: Path) -> None:
    cache = WarmCache(tmp_path / "warm")
    key = template_key("{}", "sha256:1")
    _store(cache, key)
    with cache.making("postgres", key) as mine:
        assert mine
        with cache.using("postgres", key) as template:
            assert template is None  # being made (or removed): the run starts afresh, not waits
    with cache.using("postgres", key) as template:
        assert template is not None
        with cache.making("postgres", key) as other:
            assert not other
        removed, busy = cache.remove()
        assert removed == 0 and busy == [f"postgres {key}"]
    removed, busy = cache.remove()
    assert removed > 0 and busy == [] and cache.templates() == []


def test_a_new_image_supersedes_the_same_settings_older_template(tmp_path: Path) -> None:
    cache = WarmCache(tmp_path / "warm")
    old, new = template_key("{}", "sha256:1"), template_key("{}", "sha256:2")
    other_settings = template_key("{1}", "sha256:1")
    _store(cache, old)
    _store(cache, other_settings)
    _store(cache, new)
    assert sorted(t.key for t in cache.templates()) == sorted([new, other_settings])


def test_seeding_unpacks_into_memory_then_runs_the_images_own_entrypoint(tmp_path: Path) -> None:
    plan = plan_for(PG_MY)
    spec = service(plan, "postgres")
    cache = WarmCache(tmp_path / "warm")
    _store(cache, "k-1")
    template = cache.find("postgres", "k-1")
    assert template is not None
    container = seeded(spec, template, ImageConfig("sha256:1", ("docker-entrypoint.sh",), ("postgres",)))
    assert container.entrypoint is not None and container.entrypoint[:2] == ("sh", "-c")
    assert "tar -x -p --numeric-owner -f /run/moat-warm/0.tar -C /var/lib/postgresql" in container.entrypoint[2]
    assert container.entrypoint[2].endswith('exec "$@"')
    assert container.command == ("docker-entrypoint.sh", "postgres")
    assert container.tmpfs == spec.container.tmpfs  # still in memory
    (mount,) = [m for m in container.mounts if m.target == "/run/moat-warm"]
    assert mount.read_only and mount.source == str(template.path)


# --- a run's course --------------------------------------------------------------------------------

def _pg_plan(home: Path, command: tuple[str, ...] = ("sh", "-c", "echo hi")) -> Plan:
    return make_plan(home, "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n",
                     command=command, host_env={"MOAT_WARM_CACHE": str(home / "warm")})


def _quick_to_give_up(plan: Plan) -> Plan:
    """Its services' ready_timeout a fraction of a second."""
    return dataclasses.replace(plan, services=tuple(dataclasses.replace(s, ready_timeout=0.3) for s in plan.services))


def _containers(runtime: FakeRuntime, role: str) -> list[str]:
    return [i for i, c in runtime.created.items() if c.labels.get("moat.role") == role]


def test_a_finished_run_makes_the_template_and_the_next_run_starts_from_it(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    outcome, error, _, said = execute(_pg_plan(tmp_path), runtime, tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0
    assert "postgres's warm template made" in said
    assert len(_containers(runtime, "warm")) == 1 and runtime.left() == []
    (template,) = WarmCache(tmp_path / "warm").templates()
    assert json.loads((template.path / "meta.json").read_text())["data_paths"] == ["/var/lib/postgresql/data"]

    runtime = FakeRuntime()
    plan = _pg_plan(tmp_path)
    outcome, error, meta, said = execute(plan, runtime, tmp_path)
    assert error is None, error
    (sidecar,) = [c for c in runtime.created.values() if c.labels.get("moat.role") == "service"]
    assert sidecar.spec.entrypoint is not None  # seeded from the template
    execs = [command for container, command in runtime.exec_log if container == sidecar.id]
    # One exec: the credentials set, then the catalog's check with them, with the run's password.
    (rekey_and_check,) = execs
    assert "MOAT_REKEY_SQL" in rekey_and_check[2] and rekey_and_check[2].endswith('\nexec "$@"')
    assert rekey_and_check[4:] == service(plan, "postgres").probe.command
    (env,) = [e for (container, _), e in zip(runtime.exec_log, runtime.exec_envs, strict=True)
              if container == sidecar.id]
    template = WarmCache(tmp_path / "warm").templates()[0]
    assert env["PGPASSWORD"] == service(plan, "postgres").env["POSTGRES_PASSWORD"] != template.password
    assert env["MOAT_TEMPLATE_PASSWORD"] == template.password
    assert meta["services"][0]["warm"] is True
    assert _containers(runtime, "warm") == []  # nothing more to make
    assert "warm template made" not in said


class _BrokenSeed(FakeRuntime):
    """tar refuses the template's archive: a seeded sidecar exits as it starts."""

    def start_container(self, container_id: str) -> None:
        super().start_container(container_id)
        container = self._get(container_id)
        if container.spec.entrypoint is not None:
            self._exit(container, 2)


def test_a_broken_template_is_dropped_and_the_service_starts_afresh(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    execute(_pg_plan(tmp_path), runtime, tmp_path)
    runtime = _BrokenSeed()
    outcome, error, meta, said = execute(_pg_plan(tmp_path), runtime, tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0, error
    assert "did not start from its warm template, which is removed; starting it afresh" in said
    sidecars = [c for c in runtime.created.values() if c.labels.get("moat.role") == "service"]
    assert [c.spec.entrypoint is not None for c in sidecars] == [True, False]
    assert meta["services"][0]["warm"] is False
    assert runtime.left() == []
    # Made again at the end of this run, whose agent finished.
    assert len(WarmCache(tmp_path / "warm").templates()) == 1


class _NoShell(FakeRuntime):
    """An image override without `sh`: the engine refuses to start a seeded sidecar."""

    def start_container(self, container_id: str) -> None:
        if self._get(container_id).spec.entrypoint is not None:
            raise EngineError("starting a container failed: exec: \"sh\": executable file not found in $PATH")
        super().start_container(container_id)


def test_a_seeded_sidecar_that_cannot_start_falls_back_to_a_fresh_start(tmp_path: Path) -> None:
    execute(_pg_plan(tmp_path), FakeRuntime(), tmp_path)
    runtime = _NoShell()
    outcome, error, meta, said = execute(_pg_plan(tmp_path), runtime, tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0, error
    assert "starting it afresh (starting a container failed" in said
    assert meta["services"][0]["warm"] is False and runtime.left() == []
    # Twice: the key is not made or used again (no seeded sidecar is even tried).
    execute(_pg_plan(tmp_path), _NoShell(), tmp_path)
    runtime = _NoShell()
    outcome, error, meta, said = execute(_pg_plan(tmp_path), runtime, tmp_path)
    assert error is None and "warm template made" not in said
    assert [c.spec.entrypoint for c in runtime.created.values() if c.labels.get("moat.role") == "service"] == [None]


def test_a_refused_rekey_falls_back_at_once(tmp_path: Path) -> None:
    execute(_pg_plan(tmp_path), FakeRuntime(), tmp_path)
    runtime = FakeRuntime()
    runtime.probe_results["postgres"] = [ExecResult(97, "psql: error: FATAL:  role does not exist"),
                                         ExecResult(0, "1\n")]
    outcome, error, meta, said = execute(_pg_plan(tmp_path), runtime, tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0, error
    assert "refused its check" in said and meta["services"][0]["warm"] is False


def test_a_slow_warm_start_fails_as_a_cold_one_would_and_keeps_its_template(tmp_path: Path) -> None:
    execute(_pg_plan(tmp_path), FakeRuntime(), tmp_path)
    runtime = FakeRuntime()
    runtime.probe_results["postgres"] = [ExecResult(1, "not yet")]
    plan = _quick_to_give_up(_pg_plan(tmp_path))
    _, error, _, _ = execute(plan, runtime, tmp_path)
    assert error is not None and "was not ready after" in str(error)
    assert len(WarmCache(tmp_path / "warm").templates()) == 1 and runtime.left() == []


def test_an_unusable_warm_cache_only_means_a_fresh_start(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    config = "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n"
    plan = make_plan(tmp_path, config, host_env={"MOAT_WARM_CACHE": str(tmp_path / "afile" / "warm")})
    outcome, error, _, said = execute(plan, FakeRuntime(), tmp_path)
    assert error is None and outcome is not None and outcome.exit_code == 0, error
    assert "its warm templates cannot be used" in said and "warm template was not made" in said


def test_a_failed_or_interrupted_run_makes_no_template(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.probe_results["postgres"] = [ExecResult(2, "no")]
    plan = _quick_to_give_up(_pg_plan(tmp_path))
    _, error, _, _ = execute(plan, runtime, tmp_path)
    assert error is not None
    assert _containers(runtime, "warm") == [] and WarmCache(tmp_path / "warm").templates() == []
