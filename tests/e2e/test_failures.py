"""What a user sees when something goes wrong, and that nothing is left behind afterwards."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from moat.runtime.docker import DockerRuntime
from tests.helpers import left_for, only_run, run_moat, runs, start_moat, wait_for, write_workspace

pytestmark = pytest.mark.engine

SERVICES = """\
dependencies: [postgres, redis]
services:
  postgres:
    image: moat-test/postgres:latest
{postgres_extra}
  redis:
    image: moat-test/redis:latest
"""


def test_service_that_exits_fails_fast_with_its_logs(engine: DockerRuntime, moat_home: Path,
                                                     tmp_path: Path) -> None:
    extra = "    env:\n      POSTGRES_INITDB_ARGS: --no-such-initdb-option"
    workspace = write_workspace(tmp_path / "ws", SERVICES.format(postgres_extra=extra))
    result = run_moat(["run", str(workspace), "--", "echo", "never printed"])
    assert result.code == 1, result.output
    assert result.seconds < 20  # failed as soon as the container exited, not at ready_timeout (60 s)
    assert "never printed" not in result.stdout
    assert "postgres exited with code 1" in result.stderr
    assert "no-such-initdb-option" in result.stderr  # from the container's log tail
    assert "services.postgres.env" in result.stderr  # what to try
    assert "Traceback" not in result.stderr
    run = only_run(moat_home)
    assert run["state"] == "failed"
    assert left_for(engine, run["id"]) == []


def test_readiness_timeout_names_service_wait_probe_and_logs(engine: DockerRuntime, moat_home: Path,
                                                             tmp_path: Path) -> None:
    # Postgres needs over a second to initialise here: half a second is not enough (from a warm
    # template it may be: this one initialises).
    config = "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n" \
             "    ready_timeout: 0.5\n    warm: false\n"
    workspace = write_workspace(tmp_path / "ws", config)
    result = run_moat(["run", str(workspace), "--", "true"])
    assert result.code == 1, result.output
    assert "postgres was not ready after 0.5s (ready_timeout 0.5s" in result.stderr
    assert "last check: psql" in result.stderr  # the probe and its last output
    assert "[entrypoint]" in result.stderr  # the service's own log lines
    assert "raise services.postgres.ready_timeout" in result.stderr
    assert left_for(engine, only_run(moat_home)["id"]) == []


def test_image_without_the_probe_program_fails_at_once(engine: DockerRuntime, moat_home: Path,
                                                       tmp_path: Path) -> None:
    # A redis image standing in for postgres runs fine but has no psql to check it with.
    config = "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/redis:latest\n"
    result = run_moat(["run", str(write_workspace(tmp_path / "ws", config)), "--", "true"])
    assert result.code == 1, result.output
    assert result.seconds < 20  # not the 60 s ready_timeout
    assert "has no `psql`" in result.stderr and "services.postgres.wait: false" in result.stderr
    assert left_for(engine, only_run(moat_home)["id"]) == []


def test_missing_image_says_which_and_how_to_override(engine: DockerRuntime, moat_home: Path,
                                                      tmp_path: Path) -> None:
    config = "dependencies: [redis]\nservices:\n  redis:\n    image: moat-test/no-such-image:1\n"
    result = run_moat(["run", str(write_workspace(tmp_path / "ws", config)), "--", "true"])
    assert result.code == 1, result.output
    assert "could not pull image moat-test/no-such-image:1" in result.stderr
    assert "services.redis.image" in result.stderr
    assert left_for(engine, only_run(moat_home)["id"]) == []


def test_no_engine_is_a_clear_error(moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: x\n")
    # Docker asked for by name (without it, moat would choose its sandbox).
    result = run_moat(["run", "--runtime", "docker", str(workspace), "--", "true"],
                      env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert result.code == 1
    assert "no container engine answers" in result.stderr
    assert "DOCKER_HOST" in result.stderr and "make engine" in result.stderr
    assert "Traceback" not in result.stderr


def _interrupt(engine: DockerRuntime, moat_home: Path, workspace: Path, command: list[str], signum: int,
               ready: Any) -> tuple[int, str, dict[str, Any]]:
    proc = start_moat(["run", str(workspace), "--", *command])
    try:
        run_id = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run to be recorded")
        wait_for(lambda: ready(run_id), what="the phase to interrupt")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr, only_run(moat_home)


def test_ctrl_c_during_readiness_tears_everything_down(engine: DockerRuntime, moat_home: Path,
                                                       tmp_path: Path) -> None:
    # Ten minutes of readiness to wait through: postgres never answers on a port nobody listens on.
    config = "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n" \
             "    env: {PGPORT: '5999'}\n    ready_timeout: 600\n"
    workspace = write_workspace(tmp_path / "ws", config)

    def waiting(run_id: str) -> bool:
        return bool(engine.find_labelled({"moat.run-id": run_id, "moat.role": "service"}).containers)

    code, stderr, run = _interrupt(engine, moat_home, workspace, ["true"], signal.SIGINT, waiting)
    assert code == 130, stderr
    assert run["state"] == "interrupted"
    assert left_for(engine, run["id"]) == []


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_the_agent_run_tears_everything_down(engine: DockerRuntime, moat_home: Path,
                                                           tmp_path: Path, signum: int, expected: int) -> None:
    workspace = write_workspace(tmp_path / "ws", SERVICES.format(postgres_extra=""))

    def agent_running(run_id: str) -> bool:
        meta = json.loads((moat_home / "runs" / run_id / "metadata.json").read_text())
        return meta["state"] == "running"

    code, stderr, run = _interrupt(engine, moat_home, workspace, ["sleep", "300"], signum, agent_running)
    assert code == expected, stderr
    assert run["state"] == "interrupted" and run["exit_code"] == expected
    assert (moat_home / "runs" / run["id"] / "services" / "postgres.log").exists()
    assert left_for(engine, run["id"]) == []


def test_config_errors_exit_2_before_anything_starts(engine: DockerRuntime, moat_home: Path,
                                                     tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "dependencies: [postgress]\nnetwork:\n  keep_policy: my-pack\n")
    result = run_moat(["run", str(workspace), "--", "true"])
    assert result.code == 2
    assert "moat.yaml:1" in result.stderr and "did you mean 'postgres'?" in result.stderr
    assert not (moat_home / "runs").exists()
    fixed = write_workspace(tmp_path / "ws", "dependencies: [postgres]\nnetwork:\n  keep_policy: my-pack\n")
    result = run_moat(["run", str(fixed), "--", "true"])
    assert result.code == 2
    assert "not supported yet: network.keep_policy" in result.stderr
    assert not (moat_home / "runs").exists()
