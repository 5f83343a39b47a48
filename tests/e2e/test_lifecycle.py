"""Detached runs, logs, list, stop, destroy, clean, status, and crash safety (issue: run lifecycle)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from moat.runtime.docker import DockerRuntime
from tests.helpers import (
    left_for,
    log_records,
    metadata,
    moat_command,
    run_moat,
    runs,
    start_moat,
    wait_for,
    write_workspace,
)

pytestmark = pytest.mark.engine

REDIS = "dependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"
NEVER_READY = ("dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n"
               "    env: {PGPORT: '5999'}\n    ready_timeout: 600\n")


def detach(workspace: Path, *command: str) -> tuple[str, str]:
    result = run_moat(["run", "-d", str(workspace), "--", *command])
    assert result.code == 0, result.output
    run_id, name = result.stdout.split()
    return run_id, name


def wait_ended(home: Path, run_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(lambda: (m := metadata(home, run_id)).get("ended_at") and m, timeout, f"{run_id} to end")


def test_detached_run_returns_at_once_and_its_supervisor_finishes_the_run(
        engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", REDIS)
    started = time.monotonic()
    run_id, name = detach(workspace, "sh", "-c", "sleep 2; echo done; exit 4")
    assert time.monotonic() - started < 30
    meta = metadata(moat_home, run_id)
    assert meta["state"] == "running" and meta["detached"] is True and meta["name"] == name
    assert meta["pid"] != os.getpid()
    listed = json.loads(run_moat(["list", "--json"]).stdout)
    assert [r["id"] for r in listed] == [run_id]
    final = wait_ended(moat_home, run_id)
    assert (final["state"], final["exit_code"]) == ("exited", 4)
    assert [r["line"] for r in log_records(moat_home, run_id) if r["stream"] == "stdout"] == ["done"]
    assert left_for(engine, run_id) == []
    assert (moat_home / "runs" / run_id / "services" / "redis.log").exists()


def test_logs_follow_streams_a_detached_run_and_exits_when_it_ends(
        engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: follow\n")
    run_id, _ = detach(workspace, "sh", "-c", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.7; done")
    follower = subprocess.Popen(moat_command("logs", "-f", run_id), stdout=subprocess.PIPE, text=True,
                                env=os.environ.copy())
    assert follower.stdout is not None
    arrivals = {}
    for line in follower.stdout:
        if " stdout " in line:
            arrivals[line.split()[-1]] = time.monotonic()
    follower.wait(timeout=60)
    assert follower.returncode == 0
    assert sorted(arrivals) == ["1", "2", "3", "4", "5", "6"]
    # Lines arrived as they were written (0.7 s apart), not all at once at the end.
    assert arrivals["6"] - arrivals["1"] > 2.0
    assert metadata(moat_home, run_id)["state"] == "exited"


def test_logs_tail_json_and_service(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", REDIS + "name: tail\n")
    result = run_moat(["run", str(workspace), "--", "sh", "-c", "for i in 1 2 3 4 5; do echo n$i; done"])
    assert result.code == 0, result.output
    last_two = run_moat(["logs", "tail", "-n", "2"]).stdout.splitlines()
    assert last_two[0].split()[1:] == ["stdout", "n5"]
    assert last_two[1].split()[1:] == ["moat", "agent", "exited", "with", "code", "0"]
    records = [json.loads(line) for line in run_moat(["logs", "--json"]).stdout.splitlines()]
    assert {"ts", "stream", "line"} <= set(records[0])
    assert [r["line"] for r in records if r["stream"] == "stdout"] == ["n1", "n2", "n3", "n4", "n5"]
    service = run_moat(["logs", "--service", "redis"])
    assert "Ready to accept connections" in service.stdout
    unknown = run_moat(["logs", "--service", "rediss"])
    assert unknown.code == 2 and "did you mean 'redis'?" in unknown.stderr


def test_sigterm_to_a_detached_runs_supervisor_tears_down(engine: DockerRuntime, moat_home: Path,
                                                          tmp_path: Path) -> None:
    run_id, _ = detach(write_workspace(tmp_path / "ws", REDIS), "sleep", "300")
    os.kill(metadata(moat_home, run_id)["pid"], signal.SIGTERM)
    final = wait_ended(moat_home, run_id, timeout=60)
    assert (final["state"], final["exit_code"]) == ("interrupted", 143)
    assert left_for(engine, run_id) == []


def test_stop_defaults_to_the_most_recent_active_run(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    older, _ = detach(write_workspace(tmp_path / "a", "name: older\n"), "sleep", "300")
    newer, _ = detach(write_workspace(tmp_path / "b", "name: newer\n"), "sleep", "300")
    stopped = run_moat(["stop"])
    assert stopped.code == 0 and f"stopped {newer}" in stopped.stdout
    assert metadata(moat_home, newer)["state"] == "interrupted"
    assert metadata(moat_home, older)["state"] == "running"
    refused = run_moat(["destroy", "older"])
    assert refused.code == 2 and "still running" in refused.stderr
    forced = run_moat(["destroy", "-f", "older"])
    assert forced.code == 0, forced.output
    assert not (moat_home / "runs" / older).exists()
    assert left_for(engine, older) == [] and left_for(engine, newer) == []
    assert run_moat(["destroy", newer]).code == 0
    assert runs(moat_home) == []


def test_sigkill_of_moat_during_readiness_then_clean(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    proc = start_moat(["run", str(write_workspace(tmp_path / "ws", NEVER_READY)), "--", "true"])
    run_id = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run")
    wait_for(lambda: engine.find_labelled({"moat.run-id": run_id, "moat.role": "service"}).containers,
             what="the service container")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert left_for(engine, run_id), "SIGKILL leaves the run's objects behind until something reaps them"
    listed = json.loads(run_moat(["list", "--json"]).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(run_id, "orphaned")]
    status = json.loads(run_moat(["status", "--json"]).stdout)
    assert status["orphans"]["runs"] == 1 and status["orphans"]["objects"] >= 2
    dry = run_moat(["clean", "--dry-run"])
    assert dry.code == 0 and run_id in dry.stdout and left_for(engine, run_id)
    clean = run_moat(["clean", "-f"])
    assert clean.code == 0, clean.output
    assert left_for(engine, run_id) == []
    assert metadata(moat_home, run_id)["state"] == "failed"


def test_the_next_run_reaps_what_a_killed_run_left(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    proc = start_moat(["run", str(write_workspace(tmp_path / "a", NEVER_READY)), "--", "true"])
    killed = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run")
    wait_for(lambda: engine.find_labelled({"moat.run-id": killed, "moat.role": "service"}).containers,
             what="the service container")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    result = run_moat(["run", str(write_workspace(tmp_path / "b", "name: next\n")), "--", "true"])
    assert result.code == 0, result.output
    assert left_for(engine, killed) == []


def test_clean_never_touches_a_running_run(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    run_id, _ = detach(write_workspace(tmp_path / "ws", REDIS), "sleep", "300")
    before = left_for(engine, run_id)
    assert run_moat(["clean", "-f"]).code == 0
    assert left_for(engine, run_id) == before
    assert metadata(moat_home, run_id)["state"] == "running"
    assert run_moat(["stop", run_id]).code == 0
    assert left_for(engine, run_id) == []


@pytest.mark.parametrize("count", [4, 8])
def test_concurrent_detached_runs_keep_to_themselves(engine: DockerRuntime, moat_home: Path, tmp_path: Path,
                                                     count: int) -> None:
    script = ('export REDISCLI_AUTH="$MOAT_REDIS_PASSWORD";'
              'redis-cli -h "$MOAT_REDIS_HOST" SET who "$MOAT_RUN_NAME" >/dev/null;'
              'for i in 1 2 3; do echo "$MOAT_RUN_NAME $i"; sleep 0.3; done;'
              'echo "$MOAT_RUN_NAME sees $(redis-cli -h "$MOAT_REDIS_HOST" GET who)"')
    config = REDIS.replace("[redis]", "[redis, redis-cli]")
    procs = [start_moat(["run", "-d", "-n", f"conc-{i}", str(write_workspace(tmp_path / f"ws{i}", config)),
                         "--", "sh", "-c", script]) for i in range(count)]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ids.append(out.split()[0])
    for run_id in ids:
        final = wait_ended(moat_home, run_id)
        assert final["exit_code"] == 0, final
        name = final["name"]
        lines = [r["line"] for r in log_records(moat_home, run_id) if r["stream"] == "stdout"]
        assert lines == [f"{name} 1", f"{name} 2", f"{name} 3", f"{name} sees {name}"]
        assert left_for(engine, run_id) == []


def test_list_json_schema(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    result = run_moat(["run", str(write_workspace(tmp_path / "ws", REDIS + "name: schema\n")), "--", "true"])
    assert result.code == 0, result.output
    assert json.loads(run_moat(["list", "--json"]).stdout) == []  # nothing active
    [record] = json.loads(run_moat(["list", "--json", "--all"]).stdout)
    assert set(record) == {"id", "name", "state", "exit_code", "created_at", "started_at", "ended_at",
                           "age_seconds", "workspace", "runtime", "image", "services", "detached", "pid"}
    assert (record["name"], record["state"], record["exit_code"], record["services"]) == ("schema", "exited", 0,
                                                                                           ["redis"])
    text = run_moat(["list", "--all"]).stdout
    assert text.splitlines()[0].split() == ["NAME", "RUN", "ID", "STATE", "EXIT", "AGE", "SERVICES"]
    status = json.loads(run_moat(["status", "--json"]).stdout)
    assert set(status) == {"engine", "sandbox", "home", "active_runs", "runs_recorded", "disk", "orphans",
                           "kubernetes"}
    assert status["kubernetes"] is None  # no MOAT_HOME/config.yaml
    assert status["engine"]["answers"] is True and status["runs_recorded"] == 1
    assert set(status["disk"]) == {"runs_bytes", "cache_bytes", "images_bytes"}


def test_sigint_during_the_image_build_tears_down(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    containers_before = {c["Id"] for c in engine.api.containers(all=True)}
    workspace = write_workspace(tmp_path / "ws", REDIS.replace("[redis]", "[redis, jq, make]"))
    proc = start_moat(["run", "--rebuild", str(workspace), "--", "true"])  # --rebuild: no layer cache
    try:
        run_id = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run")
        build_log = moat_home / "runs" / run_id / "logs.jsonl"
        wait_for(lambda: engine.find_labelled({"moat.run-id": run_id, "moat.role": "service"}).containers
                 and build_log.exists(), what="the build and the services to be under way")
        time.sleep(1.0)  # well inside apt-get
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert metadata(moat_home, run_id)["state"] == "interrupted"
    assert not any("built agent image" in r["line"] for r in log_records(moat_home, run_id))  # mid-build
    assert left_for(engine, run_id) == []
    # The engine cancelled the build when moat hung up: no intermediate build container lingers.
    wait_for(lambda: {c["Id"] for c in engine.api.containers(all=True)} <= containers_before, timeout=30,
             what="the build's intermediate containers to go")


def test_another_moat_home_never_reaps_a_detached_run(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    run_id, _ = detach(write_workspace(tmp_path / "ws", REDIS), "sh", "-c", "sleep 4; echo still-here")
    other = tmp_path / "other-home"
    result = run_moat(["run", str(write_workspace(tmp_path / "b", "name: b\n")), "--", "true"],
                      env={"MOAT_HOME": str(other)})
    assert result.code == 0, result.output
    assert run_moat(["clean", "-f"], env={"MOAT_HOME": str(other)}).code == 0
    final = wait_ended(moat_home, run_id)
    assert (final["state"], final["exit_code"]) == ("exited", 0), final
    assert [r["line"] for r in log_records(moat_home, run_id) if r["stream"] == "stdout"] == ["still-here"]


def test_keep_after_a_failure_leaves_nothing(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    # A redis image standing in for postgres: the run fails before the agent's turn.
    config = "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/redis:latest\n"
    result = run_moat(["run", "--keep", str(write_workspace(tmp_path / "ws", config)), "--", "true"])
    assert result.code == 1
    assert left_for(engine, runs(moat_home)[0]["id"]) == []


def test_keep_keeps_the_agent_that_ran_for_a_look_and_nothing_else(engine: DockerRuntime, moat_home: Path,
                                                                 tmp_path: Path) -> None:
    config = "dependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"
    workspace = write_workspace(tmp_path / "ws", config)
    result = run_moat(["run", "--keep", str(workspace), "--", "sh", "-c", "echo kept-file > $HOME/left; echo done"])
    assert result.code == 0, result.output
    assert "left things behind" not in result.stderr and "failed" not in result.stderr, result.stderr
    run_id = runs(moat_home)[0]["id"]
    [kept] = left_for(engine, run_id)  # the agent alone: its pod's holder, network and services are gone
    container = engine.client.containers.get(kept)
    try:
        assert container.labels["moat.role"] == "agent" and container.status == "exited"
        assert "done" in container.logs().decode()
        bits, _ = container.get_archive("/home/moatuser/left")  # its files are there to look at
        assert b"kept-file" in b"".join(bits)
        listed = run_moat(["system", "containers", "--json"])
        assert listed.code == 0, listed.output
        assert {"name": container.name, "runtime": "docker", "status": "exited", "run_id": run_id}.items() <= next(
            c for c in json.loads(listed.stdout) if c["id"] == kept).items()
        # Its directory is not a leftover while the container is there ...
        assert f"moat-{run_id}" not in run_moat(["system", "clean-temp", "--dry-run", "--min-age", "0s"]).stdout
    finally:
        container.remove(force=True)
        scratch = Path(tempfile.gettempdir()) / f"moat-{run_id}"  # its mounts stay with it (docker cp)
        assert (scratch / "context" / "moat-context.md").is_file()
    # ... and is one once it is gone.
    assert str(scratch) in run_moat(["system", "clean-temp", "--dry-run", "--min-age", "0s"]).stdout
    shutil.rmtree(scratch)
    assert left_for(engine, run_id) == []


@pytest.mark.parametrize(("signum", "word", "code"), [(signal.SIGINT, "INT", 3), (signal.SIGTERM, "TERM", 4)])
def test_a_signal_to_moat_reaches_the_agent_as_itself(engine: DockerRuntime, moat_home: Path, tmp_path: Path,
                                                      signum: int, word: str, code: int) -> None:
    # Told apart: the agent says which signal it got, and exits with a code of its own.
    workspace = write_workspace(tmp_path / "ws", "name: forward\n")
    script = ("trap 'echo got-INT > /workspace/got; exit 3' INT; trap 'echo got-TERM > /workspace/got; exit 4' TERM;"
              " echo ready; while :; do sleep 0.1; done")
    proc = start_moat(["run", str(workspace), "--", "sh", "-c", script])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run_id = runs(moat_home)[0]["id"]
    proc.send_signal(signum)
    proc.communicate(timeout=60)
    assert (workspace / "got").read_text() == f"got-{word}\n"
    assert proc.returncode == code  # the agent's own answer is moat's exit code
    meta = metadata(moat_home, run_id)
    assert (meta["state"], meta["exit_code"]) == ("interrupted", code)
    assert left_for(engine, run_id) == []


def test_an_agent_that_ignores_sigterm_is_stopped_after_the_grace(engine: DockerRuntime, moat_home: Path,
                                                                  tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: stubborn\n")
    script = "trap '' TERM INT; echo ready; while :; do sleep 0.1; done"
    proc = start_moat(["run", str(workspace), "--", "sh", "-c", script])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run_id = runs(moat_home)[0]["id"]
    started = time.monotonic()
    stopped = run_moat(["stop", run_id])
    assert stopped.code == 0, stopped.output
    proc.communicate(timeout=60)
    assert proc.returncode == 137  # SIGKILL after the SIGTERM it ignored
    assert 10 <= time.monotonic() - started < 25  # SIGTERM, 10 s to honour it, then SIGKILL
    assert left_for(engine, run_id) == []


def test_unusable_moat_home_and_repeated_destroy_are_usage_errors(engine: DockerRuntime, moat_home: Path,
                                                                  tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: twice\n")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_moat(["run", str(workspace), "--", "true"], env={"MOAT_HOME": str(not_a_dir)})
    assert result.code == 2 and "cannot keep runs in" in result.stderr and "internal error" not in result.stderr
    assert run_moat(["run", str(workspace), "--", "true"]).code == 0
    run_id = runs(moat_home)[0]["id"]
    destroyed = run_moat(["destroy", run_id, "twice"])  # its id and its name: the same run
    assert destroyed.code == 0, destroyed.output
    assert destroyed.stdout.count("destroyed") == 1


def test_run_d_on_a_terminal_gives_the_cursor_back(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    import pty

    workspace = write_workspace(tmp_path / "ws", REDIS)
    master, slave = pty.openpty()
    proc = subprocess.Popen(moat_command("run", "-d", str(workspace), "--", "sleep", "1"), stdin=slave,
                            stdout=slave, stderr=slave, env=os.environ.copy())
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer has gone
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(60) == 0, output
    os.close(master)
    hidden, shown = output.rfind(b"\x1b[?25l"), output.rfind(b"\x1b[?25h")
    assert hidden >= 0, "the live status hid the cursor"
    assert shown > hidden, "the cursor was left hidden"
    run_id = runs(moat_home)[0]["id"]
    wait_ended(moat_home, run_id)
    assert left_for(engine, run_id) == []


def test_a_live_services_log_is_masked_and_can_be_followed(engine: DockerRuntime, moat_home: Path,
                                                          tmp_path: Path) -> None:
    config = "dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n"
    run_id, _ = detach(write_workspace(tmp_path / "ws", config), "sleep", "300")
    container = metadata(moat_home, run_id)["services"][0]["container_id"]
    # The server logs a failing statement, which here names the password.
    leak = engine.exec(container, ("sh", "-c", 'PGPASSWORD="$POSTGRES_PASSWORD" psql -U postgres -h 127.0.0.1'
                                               ' -c "select * from leak_$POSTGRES_PASSWORD"'), {})
    password = engine.container_env(container)["POSTGRES_PASSWORD"]
    assert len(password) == 32 and "leak_" in leak.output
    shown = run_moat(["logs", "--service", "postgres", run_id])
    assert shown.code == 0, shown.output
    assert "leak_****" in shown.stdout and password not in shown.stdout
    follower = subprocess.Popen(moat_command("logs", "--service", "postgres", "-f", run_id), stdout=subprocess.PIPE,
                                text=True, env=os.environ.copy())
    assert follower.stdout is not None
    wait_for(lambda: "leak_****" in (follower.stdout.readline() if follower.stdout else ""), 30, "the leak line")
    assert run_moat(["stop", run_id]).code == 0
    rest, _ = follower.communicate(timeout=30)  # following ends with the service
    assert password not in rest
    assert left_for(engine, run_id) == []


def test_an_interactive_run_without_a_terminal_passes_each_signal_once(engine: DockerRuntime, moat_home: Path,
                                                                       tmp_path: Path) -> None:
    # The docker CLI attached to the agent also passes on its process group's signals: the agent got
    # every Ctrl-C twice, and the second cut its output short.
    workspace = write_workspace(tmp_path / "ws", "name: interactive\n")
    script = ("trap 'echo got INT; n=$((n+1))' INT; n=0; echo ready; i=0; while [ $i -lt 40 ]; do sleep 0.1;"
              " i=$((i+1)); done; echo \"end after $n\"")
    proc = subprocess.Popen(moat_command("run", "-i", str(workspace), "--", "sh", "-c", script),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=os.environ.copy())
    assert proc.stdout is not None
    wait_for(lambda: "ready" in proc.stdout.readline() if proc.stdout else False, 60, "the agent")  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert out.count("got INT") == 1, (out, err)
    assert "end after 1" in out
