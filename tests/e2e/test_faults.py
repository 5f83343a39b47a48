"""Faults, one by one: whatever goes wrong, moat says what happened, records it, and nothing labelled
by moat is left on the engine (after `moat clean`, where moat itself was killed or the engine was gone).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from moat.ownership import home_id
from moat.runtime.docker import DockerRuntime
from tests.conftest import skip_or_fail
from tests.helpers import left_for, metadata, moat_command, run_moat, runs, start_moat, wait_for, write_workspace

pytestmark = pytest.mark.engine

REDIS = "dependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"
NEVER_READY = ("dependencies: [postgres]\nservices:\n  postgres:\n    image: moat-test/postgres:latest\n"
               "    env: {PGPORT: '5999'}\n    ready_timeout: 600\n")


def first_run(home: Path) -> str:
    return str(wait_for(lambda: runs(home) and runs(home)[0]["id"], what="the run to be recorded"))


# --- the held agent's container dies before its turn (used to hang forever) ----------------------


def test_a_held_agent_killed_before_its_turn_ends_the_run(engine: DockerRuntime, moat_home: Path,
                                                         tmp_path: Path) -> None:
    proc = start_moat(["run", str(write_workspace(tmp_path / "ws", NEVER_READY)), "--", "echo", "never"])
    run_id = first_run(moat_home)
    agent = wait_for(lambda: engine.find_labelled({"moat.run-id": run_id, "moat.role": "agent"}).containers,
                     what="the held agent")[0]
    wait_for(lambda: engine.state(agent).running, what="the held agent to run")
    engine.signal(agent, signal.SIGKILL)  # `docker kill` of the held agent
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "stopped (exit 137) before its turn" in err and "never" not in out
    assert metadata(moat_home, run_id)["state"] == "failed"
    assert left_for(engine, run_id) == []


def test_an_agent_that_cannot_even_start_is_a_clear_error(engine: DockerRuntime, moat_home: Path,
                                                          tmp_path: Path) -> None:
    # nproc 0: the container's init cannot start the command at all.
    config = REDIS + "container:\n  ulimits:\n    nproc: {soft: 0, hard: 0}\n"
    started = time.monotonic()
    result = run_moat(["run", str(write_workspace(tmp_path / "ws", config)), "--", "echo", "never"], timeout=120)
    assert result.code == 1, result.output
    assert time.monotonic() - started < 60
    assert "the agent's container stopped (exit" in result.stderr and "before its turn" in result.stderr
    assert "never" not in result.stdout and "internal error" not in result.stderr
    assert left_for(engine, runs(moat_home)[0]["id"]) == []


# --- signals at every phase ------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_readiness_tears_down(engine: DockerRuntime, moat_home: Path, tmp_path: Path,
                                              signum: int) -> None:
    proc = start_moat(["run", str(write_workspace(tmp_path / "ws", NEVER_READY)), "--", "true"])
    run_id = first_run(moat_home)
    wait_for(lambda: engine.find_labelled({"moat.run-id": run_id, "moat.role": "service"}).containers,
             what="the service")
    proc.send_signal(signum)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    meta = metadata(moat_home, run_id)
    assert (meta["state"], meta["exit_code"]) == ("interrupted", 128 + signum) and meta["ended_at"]
    assert left_for(engine, run_id) == []


def test_a_closed_terminal_ends_the_agent_and_the_run(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    # SIGHUP used to kill moat with four containers and a network left running.
    proc = start_moat(["run", str(write_workspace(tmp_path / "ws", REDIS)), "--", "sh", "-c",
                       "echo ready; sleep 300"])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run_id = runs(moat_home)[0]["id"]
    proc.send_signal(signal.SIGHUP)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP  # the agent's own death by SIGHUP
    assert metadata(moat_home, run_id)["state"] == "interrupted"
    assert left_for(engine, run_id) == []


def test_sigkill_then_clean(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    proc = start_moat(["run", str(write_workspace(tmp_path / "ws", REDIS)), "--", "sh", "-c", "echo ready; sleep 300"])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run_id = runs(moat_home)[0]["id"]
    proc.kill()
    proc.wait(30)
    assert left_for(engine, run_id)
    assert run_moat(["clean", "-f"]).code == 0
    assert left_for(engine, run_id) == []
    assert metadata(moat_home, run_id)["state"] == "failed"


# --- the detached run's hand-off, raced ------------------------------------------------------------


def test_stop_racing_the_hand_off_never_loses_the_run(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    # `moat stop` sent while `moat run -d` hands the run over used to be lost in 5 of 33 trials: the
    # agent went on running. Whatever the timing, the run must end up stopped and removed.
    workspace = write_workspace(tmp_path / "ws", "name: race\n")
    rng = random.Random(7)
    for trial in range(12):
        before = {r["id"] for r in runs(moat_home)}
        proc = start_moat(["run", "-d", str(workspace), "--", "sleep", "300"])
        run_id = wait_for(lambda b=before: [r["id"] for r in runs(moat_home) if r["id"] not in b], what="the run")[0]
        wait_for(lambda rid=run_id: metadata(moat_home, rid).get("state") in ("starting", "running"), what="start")
        time.sleep(rng.uniform(0.0, 0.8))
        stopped = run_moat(["stop", run_id], timeout=120)
        out, err = proc.communicate(timeout=120)
        try:
            final = wait_for(lambda rid=run_id: metadata(moat_home, rid).get("ended_at") and metadata(moat_home, rid),
                             timeout=60, what=f"trial {trial} to end")
        except AssertionError as exc:  # a rare race: what each side said and what the record holds
            raise AssertionError(f"{exc} (stop: {stopped.code} {stopped.output!r}; run -d: {proc.returncode}"
                                 f" {out!r} {err!r}; record: {metadata(moat_home, run_id)};"
                                 f" engine: {left_for(engine, run_id)})") from None
        assert final["state"] in ("interrupted", "failed"), (trial, final)
        assert left_for(engine, run_id) == [], (trial, final)


def test_killing_the_foreground_during_the_hand_off_never_strands_the_run(engine: DockerRuntime, moat_home: Path,
                                                                          tmp_path: Path) -> None:
    # The supervisor used to die on a broken pipe, leaving the record `running`. Now either the
    # foreground still owned the run (it is orphaned, and `moat clean` reaps it), or the supervisor
    # did (it finishes the run).
    workspace = write_workspace(tmp_path / "ws", "name: handoff\n")
    rng = random.Random(11)
    for trial in range(8):
        before = {r["id"] for r in runs(moat_home)}
        proc = start_moat(["run", "-d", str(workspace), "--", "sh", "-c", "sleep 1; echo finished"])
        run_id = wait_for(lambda b=before: [r["id"] for r in runs(moat_home) if r["id"] not in b], what="the run")[0]
        wait_for(lambda rid=run_id: metadata(moat_home, rid).get("state") in ("starting", "running"), what="start")
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.wait(30)
        time.sleep(3)  # a supervisor that owns it finishes the 1 s agent
        run_moat(["clean", "-f"])
        final = wait_for(lambda rid=run_id: metadata(moat_home, rid).get("ended_at") and metadata(moat_home, rid),
                         timeout=60, what=f"trial {trial} to end")
        assert final["state"] in ("exited", "failed", "interrupted"), (trial, final)
        if final["state"] == "exited":
            assert final["exit_code"] == 0
        assert left_for(engine, run_id) == [], (trial, final)


def test_sigterm_to_the_supervisor_tears_down(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    result = run_moat(["run", "-d", str(write_workspace(tmp_path / "ws", REDIS)), "--", "sleep", "300"])
    assert result.code == 0, result.output
    run_id = result.stdout.split()[0]
    meta = metadata(moat_home, run_id)
    os.kill(meta["pid"], signal.SIGTERM)
    final = wait_for(lambda: metadata(moat_home, run_id).get("ended_at") and metadata(moat_home, run_id), 60)
    assert (final["state"], final["exit_code"]) == ("interrupted", 143)
    assert left_for(engine, run_id) == []


# --- a full MOAT_HOME --------------------------------------------------------------------------------


@pytest.fixture
def small_home(tmp_path: Path) -> Any:
    """A MOAT_HOME on a 2 MB tmpfs of its own, which the test can fill."""
    if os.getuid() != 0:
        skip_or_fail("mounting a small tmpfs needs root")
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "moat-test-full", str(home)], check=True)
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def fill(directory: Path) -> None:
    with (directory / "filler").open("wb") as handle:
        try:
            while True:
                handle.write(b"x" * 65536)
                handle.flush()
        except OSError:
            pass


def test_a_full_moat_home_before_the_run_is_a_usage_error(engine: DockerRuntime, small_home: Path,
                                                         tmp_path: Path) -> None:
    fill(small_home)
    result = run_moat(["run", str(write_workspace(tmp_path / "ws", REDIS)), "--", "true"],
                      env={"MOAT_HOME": str(small_home)})
    assert result.code == 2, result.output
    assert "cannot keep runs in" in result.stderr and "No space left on device" in result.stderr
    assert "internal error" not in result.stderr
    left = engine.find_labelled({"moat.home": home_id(small_home)})
    assert [*left.containers, *left.networks] == []  # nothing was started
    assert not list(small_home.glob("runs/run_*"))


def test_a_moat_home_filling_up_mid_run_still_tears_everything_down(engine: DockerRuntime, small_home: Path,
                                                                    tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", REDIS)
    go = workspace / "go"
    proc = start_moat(["run", str(workspace), "--", "sh", "-c",
                       "echo ready; while [ ! -f /workspace/go ]; do sleep 0.1; done; echo more output"],
                      env={"MOAT_HOME": str(small_home)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run_id = next(p.name for p in (small_home / "runs").iterdir())
    fill(small_home)  # the disk is full: the sidecar's log cannot be saved, nor more output recorded
    go.write_text("now")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # the agent's own exit code: recording is not the agent's business
    assert "more output" in out
    assert "No space left on device" in err and "internal error" not in err
    assert "could not save redis's log" in err
    assert "left things behind" not in err  # a log not saved is not a leftover
    assert left_for(engine, run_id) == []
    # The run's outcome is recorded all the same: the old record's blocks hold it.
    meta = metadata(small_home, run_id)
    assert (meta["state"], meta["exit_code"]) == ("exited", 0) and meta["ended_at"]


# --- the engine goes away mid-run ------------------------------------------------------------------


class SecondEngine:
    """A second dockerd of the test's own, in a network namespace of its own (its socket, data and
    bridge too), which the test may stop and start again without touching the engine everything else
    uses. In the host's namespace a second dockerd restarting deletes the host's docker0 (the other
    engine's bridge); in its own namespace, whatever it does to bridges stays there. (`nsenter`, not
    `ip netns exec`, which mounts a fresh /sys without the cgroups dockerd needs.)"""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.netns = f"moat-te-{os.getpid()}"
        self.socket = root / "d.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def make_namespace(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)

    def remove_namespace(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)

    def start(self) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", "dockerd", "-H", self.host,
             "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
             "--pidfile", str(self.root / "dockerd.pid"), "--iptables=false", "--ip-masq=false",
             "--storage-driver", "overlay2", "--shutdown-timeout", "2",
             "--default-ulimit", "nofile=20000:20000", "--default-ulimit", "nproc=32768:32768"],
            stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: subprocess.run(["docker", "-H", self.host, "info"], capture_output=True,
                                        check=False).returncode == 0, timeout=60, what="the test engine")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nsenter execs dockerd: this is its pid
            self.proc.wait(60)


@pytest.fixture
def test_engine(engine: DockerRuntime) -> Any:
    if os.getuid() != 0:
        skip_or_fail("a second engine needs root")
    root = Path(f"/tmp/moat-te-{os.getpid()}")  # short: the exec-root holds sockets
    root.mkdir(exist_ok=True)
    second = SecondEngine(root)
    host_links = _links()
    second.make_namespace()
    try:
        second.start()
        yield second
    finally:
        second.stop()
        second.remove_namespace()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    assert _links() >= host_links, "the second engine changed the host's network interfaces"


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_the_engine_restarting_mid_run_is_a_clear_error_and_clean_finishes(
        engine: DockerRuntime, moat_home: Path, tmp_path: Path, test_engine: SecondEngine) -> None:
    workspace = write_workspace(tmp_path / "ws", REDIS)
    # The same images in the test's engine: the services', the agent's and the pod's holder's (built once
    # on the main one).
    plan = json.loads(run_moat(["run", "--runtime", "docker", "--dry-run", "--json", str(workspace), "--", "true"]
                               ).stdout)
    assert run_moat(["run", "--runtime", "docker", str(workspace), "--", "true"]).code == 0
    save = subprocess.Popen(["docker", "save", "moat-test/redis:latest", plan["image"]["tag"], plan["holder"]["image"]],
                            stdout=subprocess.PIPE)
    subprocess.run(["docker", "-H", test_engine.host, "load", "-q"], stdin=save.stdout, check=True,
                   capture_output=True)
    assert save.wait() == 0
    env = {"DOCKER_HOST": test_engine.host}
    proc = start_moat(["run", "--runtime", "docker", str(workspace), "--", "sh", "-c", "echo ready; sleep 300"],
                      env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run_id = max(runs(moat_home), key=lambda r: r["created_at"])["id"]
    test_engine.stop()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "internal error" not in err and "Traceback" not in err
    assert "stopped answering" in err and "moat clean" in err
    meta = metadata(moat_home, run_id)
    assert meta["ended_at"] and (meta.get("error") or meta.get("teardown_problems"))
    test_engine.start()
    remote = DockerRuntime(client=docker.DockerClient(base_url=test_engine.host))
    clean = subprocess.run(moat_command("clean", "-f"), env={**os.environ, **env}, capture_output=True, text=True,
                           timeout=120, check=False)
    assert clean.returncode == 0, clean.stderr
    assert left_for(remote, run_id) == []


# --- an engine that stops answering (hangs, rather than going away) ----------------------------------


@pytest.fixture
def stalling_engine(tmp_path: Path, engine: DockerRuntime) -> Any:
    """DOCKER_HOST for a proxy to the engine, and the proxy process (SIGSTOP: the engine hangs)."""
    socket_path = tmp_path / "stall.sock"
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stall_proxy.py")), str(socket_path),
                              "/var/run/docker.sock"], stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
    try:
        yield f"unix://{socket_path}", proxy
    finally:
        proxy.send_signal(signal.SIGCONT)
        proxy.kill()
        proxy.wait(10)


@pytest.mark.parametrize("phase", ["readiness", "agent"])
def test_insisting_leaves_a_run_whose_engine_stopped_answering(engine: DockerRuntime, moat_home: Path,
                                                               tmp_path: Path, stalling_engine: Any,
                                                               phase: str) -> None:
    # Ctrl-C used to be ignored for good: calls to a hung engine never returned, and signals only
    # ever cancelled. Now a user who insists gets out, and `moat clean` finishes the job.
    host, proxy = stalling_engine
    config = NEVER_READY if phase == "readiness" else REDIS
    proc = start_moat(["run", "--runtime", "docker", str(write_workspace(tmp_path / "ws", config)), "--", "sh", "-c",
                       "echo ready; sleep 300"], env={"DOCKER_HOST": host})
    run_id = first_run(moat_home)
    if phase == "readiness":
        wait_for(lambda: engine.find_labelled({"moat.run-id": run_id, "moat.role": "service"}).containers,
                 what="the service")
        time.sleep(1)
    else:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proxy.send_signal(signal.SIGSTOP)  # the engine hangs
    started = time.monotonic()
    for _ in range(8):  # a user pressing Ctrl-C, again and again, for a while
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert time.monotonic() - started < 30
    proxy.send_signal(signal.SIGCONT)
    assert run_moat(["clean", "-f"]).code == 0  # against the engine itself
    assert left_for(engine, run_id) == []


def test_stop_reaps_a_run_whose_owner_dies_while_it_waits(engine: DockerRuntime, moat_home: Path,
                                                          tmp_path: Path) -> None:
    # `moat stop` used to say "stopped" while the run's containers went on running.
    result = run_moat(["run", "-d", str(write_workspace(tmp_path / "ws", REDIS)), "--", "sh", "-c",
                       "trap '' TERM; sleep 60"])
    assert result.code == 0, result.output
    run_id = result.stdout.split()[0]
    stop = subprocess.Popen(moat_command("stop", run_id, "-t", "30"), stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    time.sleep(2)
    os.kill(metadata(moat_home, run_id)["pid"], signal.SIGKILL)  # the supervisor dies meanwhile
    out, _ = stop.communicate(timeout=60)
    assert stop.returncode == 0
    assert "its moat process was gone; removed what it left" in out
    assert left_for(engine, run_id) == []


def test_a_ctrl_c_just_after_the_hand_off_is_the_supervisors_to_answer(engine: DockerRuntime, moat_home: Path,
                                                                       tmp_path: Path) -> None:
    # It used to end in exit 1 and "the background supervisor could not take the run over", though
    # the supervisor had done just what it should. Whichever side of the agent's start the signal
    # lands on, the answer is right and nothing is left.
    workspace = write_workspace(tmp_path / "ws", REDIS)
    for _ in range(3):
        before = {r["id"] for r in runs(moat_home)}
        proc = start_moat(["run", "-d", str(workspace), "--", "sleep", "300"])
        run_id = wait_for(lambda b=before: [r["id"] for r in runs(moat_home) if r["id"] not in b], what="run")[0]
        wait_for(lambda rid=run_id, pid=proc.pid: metadata(moat_home, rid)["pid"] != pid, timeout=60, what="the commit")
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 130), err  # never killed by the signal itself (-2)
            assert "could not take the run over" not in err and "internal error" not in err
            if proc.returncode == 130:  # it landed before the agent started: the supervisor tore down
                final = wait_for(lambda rid=run_id: metadata(moat_home, rid).get("ended_at")
                                 and metadata(moat_home, rid), 60, "the teardown")
                assert final["state"] == "interrupted"
        finally:  # 0: the run is running in the background, as `run -d` promised; either way it ends here
            assert run_moat(["stop", run_id]).code == 0
        assert left_for(engine, run_id) == []


@pytest.mark.parametrize("after", [0.05, 0.15, 0.3, 0.45, 0.6])
def test_a_ctrl_c_in_moats_first_moments_cancels_the_run(engine: DockerRuntime, moat_home: Path, tmp_path: Path,
                                                         after: float) -> None:
    # Signals used to be ignored (not queued) until the engine's SDK was imported: the run went ahead.
    workspace = write_workspace(tmp_path / "ws", "name: early\n")
    proc = start_moat(["run", "--runtime", "docker", str(workspace), "--", "sleep", "5"])
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    for run in runs(moat_home):
        assert run["state"] == "interrupted" and left_for(engine, run["id"]) == []
