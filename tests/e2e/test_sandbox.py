"""The sandbox runtime, end to end: the same examples, real servers from Debian packages, isolation."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.ownership import home_id
from moat.runtime.sandbox import SandboxRuntime, procs
from tests.helpers import EXAMPLES, ROOT, WORKSPACE_UID, log_records, run_moat, runs, share, start_moat, wait_for

pytestmark = pytest.mark.sandbox

SERVICE_PROGRAMS = {"postgres": ("initdb", "postgres", "psql"), "mysql": ("mariadb-install-db", "mariadbd", "mysql"),
                    "redis": ("redis-server", "redis-cli")}
STANDIN = ROOT / "engine" / "images" / "ollama-standin" / "ollama.py"
# What the sandbox itself runs; a PATH of only these has none of the agent's tools.
SANDBOX_PROGRAMS = ("bwrap", "nsenter", "env", "sh", "sleep")


def owner() -> tuple[int, int]:
    """Who the agent is: the workspace's owner (as root, tests give workspaces to an unprivileged uid)."""
    return (WORKSPACE_UID, WORKSPACE_UID) if os.getuid() == 0 else (os.getuid(), os.getgid())


def new_workspace(tmp_path: Path, name: str = "ws") -> Path:
    workspace = tmp_path / name
    workspace.mkdir()
    share(workspace)
    return workspace


def copy_example(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(EXAMPLES / name, target)
    share(target)
    return target


def sandbox_processes(home: Path) -> list[int]:
    """Live processes of this MOAT_HOME's sandboxes: recorded ones (holders, services, agents, and
    the pid namespaces' inits), and any whose command line carries the home's tag (every bwrap does)."""
    found = set()
    for record in SandboxRuntime(home).records.all():
        for key in ("monitor", "init"):
            proc = procs.Proc.from_json(record.get(key))
            if procs.alive(proc):
                found.add(proc.pid)  # type: ignore[union-attr]
    tag = f"moat-sandbox:{home_id(home)}:".encode()
    for pid, _ in procs.processes():
        with contextlib.suppress(OSError):
            if any(arg.startswith(tag) for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
                found.add(pid)
    return sorted(found)


def scratch_of(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"moat-{run_id}"


def assert_nothing_left(home: Path) -> None:
    assert sandbox_processes(home) == []
    assert not any((home / "sandbox").glob("*/*")) if (home / "sandbox").exists() else True
    for run in runs(home):
        assert not scratch_of(run["id"]).exists(), f"{scratch_of(run['id'])} left"
        assert not Path(f"/sys/fs/cgroup/memory/moat/{run['id']}").exists()


@pytest.mark.parametrize(("example", "expected"), [
    ("service-postgres", ["rows in notes: 3", "1 | first note", "(db notes)"]),
    ("service-mysql", ["rows in tasks: 2", "1\twrite tests"]),
    ("service-redis", ["greeting: hello from the agent", "queue length: 3"]),
    ("multi-service", ["postgres: 3 (sum of visits)", "mysql: 42 (6*7)", "redis: 5 (counter)"]),
])
def test_examples_run_unchanged_in_the_sandbox(sandbox: SandboxRuntime, moat_home: Path, tmp_path: Path,
                                               example: str, expected: list[str]) -> None:
    result = run_moat(["run", "--runtime", "sandbox", str(copy_example(example, tmp_path))])
    assert result.code == 0, result.output
    for text in expected:
        assert text in result.stdout
    [run] = runs(moat_home)
    assert run["runtime"] == "sandbox" and run["state"] == "exited"
    assert_nothing_left(moat_home)


def test_exit_code_identity_and_workspace_files(sandbox: SandboxRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = new_workspace(tmp_path)
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "sh", "-c",
                       "pwd; echo made > made.txt; echo oops >&2; exit 9"])
    assert result.code == 9, result.output
    assert result.stdout.strip() == "/workspace"
    made = workspace / "made.txt"
    assert made.read_text() == "made\n"
    assert (made.stat().st_uid, made.stat().st_gid) == owner()
    [run] = runs(moat_home)
    streams = {(r["stream"], r["line"]) for r in log_records(moat_home, run["id"]) if r["stream"] != "moat"}
    assert streams == {("stdout", "/workspace"), ("stderr", "oops")}


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's loopback that answers 'host' to whoever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"host")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_isolation(sandbox: SandboxRuntime, moat_home: Path, tmp_path: Path, host_listener: int) -> None:
    with socket.create_connection(("127.0.0.1", host_listener), timeout=2) as conn:
        assert conn.recv(4) == b"host"  # the listener works from outside the sandbox
    probe = f"""
import os, socket
def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__ + ":" + str(exc.errno)
def write(path):
    try:
        open(path, "w").write("x")
        return "written"
    except OSError as exc:
        return type(exc).__name__
print("host-loopback", connect("127.0.0.1", {host_listener}))
print("routes", len(open("/proc/net/route").read().splitlines()) - 1)
print("etc", write("/etc/moat-sandbox-test"))
print("home", write(os.path.expanduser("~root") + "/moat-sandbox-test"))
print("host-tmp", write("/tmp/moat-sandbox-test"))
print("workspace", write("/workspace/ok.txt"))
def read(path):
    try:
        open(path).read(1)
        return "read"
    except OSError as exc:
        return type(exc).__name__
def listed(path):
    try:
        os.listdir(path)
        return "listed"
    except OSError as exc:
        return type(exc).__name__
print("shadow", read("/etc/shadow"))
print("root", listed("/root"))
print("uid", os.getuid())
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print("pids", len(pids))
host_moat = ("moat.cli" + ".main").encode()  # moat itself runs on the host, outside the sandbox
print("sees-moat", any(host_moat in open(f"/proc/{{p}}/cmdline", "rb").read() for p in pids))
"""
    workspace = new_workspace(tmp_path)
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "python3", "-c", probe])
    assert result.code == 0, result.output
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert seen["host-loopback"] == "ConnectionRefusedError:111"  # its own loopback: nothing listens
    assert seen["routes"] == "0"  # no route out at all (probed without sending anything anywhere)
    assert seen["etc"] == "OSError" and seen["home"] in ("OSError", "PermissionError")
    assert seen["host-tmp"] == "written" and not Path("/tmp/moat-sandbox-test").exists()  # a private /tmp
    assert seen["workspace"] == "written" and (workspace / "ok.txt").exists()
    assert int(seen["pids"]) < 10 and seen["sees-moat"] == "False"
    assert not Path("/etc/moat-sandbox-test").exists()
    # Never host root, whoever runs moat: root's files are closed to the agent.
    assert (seen["shadow"], seen["root"], seen["uid"]) == ("PermissionError", "PermissionError", str(owner()[0]))


def test_missing_tools_and_programs_name_their_packages(sandbox: SandboxRuntime, moat_home: Path,
                                                        tmp_path: Path) -> None:
    # A PATH with only what the sandbox itself runs: bats and ollama are missing whatever the host has.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in SANDBOX_PROGRAMS:
        found = shutil.which(program)
        assert found, program
        (bin_dir / program).symlink_to(found)
    env = {"PATH": str(bin_dir)}
    workspace = new_workspace(tmp_path)
    (workspace / "moat.yaml").write_text("dependencies: [bats]\n")
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "true"], env=env)
    assert result.code == 1, result.output
    assert "`bats` (Debian package bats)" in result.stderr and "apt-get install bats" in result.stderr
    (workspace / "moat.yaml").write_text("dependencies: [ollama]\n")
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "true"], env=env)
    assert result.code == 1, result.output
    assert "`ollama` is missing" in result.stderr and "ollama.com" in result.stderr
    assert_nothing_left(moat_home)


def test_provisioning_and_the_host_cache(sandbox: SandboxRuntime, moat_home: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ollama").symlink_to(STANDIN)  # the clearly named stand-in plays `ollama` here
    share(bin_dir)  # the service runs as the workspace's owner
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    workspace = new_workspace(tmp_path)
    (workspace / "moat.yaml").write_text(
        "dependencies: [ollama]\nservices:\n  ollama:\n    models: [tiny:1b]\n"
        "    env: {STANDIN_PULL_SECONDS: '1', STANDIN_PULL_BYTES: '1000000'}\n")
    # The agent reaches the service by its name, as in a container.
    ask = "import os, urllib.request; print(urllib.request.urlopen(os.environ['MOAT_OLLAMA_URL'] + '/api/tags').read())"
    first = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "python3", "-c", ask], env=env)
    assert first.code == 0, first.output
    assert "model tiny:1b pulled" in first.stderr
    assert '"name":"tiny:1b"' in first.stdout
    assert (moat_home / "cache/ollama/models/manifests/registry.ollama.ai/library/tiny/1b").is_file()
    second = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "true"], env=env)
    assert second.code == 0 and "model tiny:1b cached" in second.stderr
    later = max(runs(moat_home), key=lambda r: r["created_at"])
    assert later["timings"]["provision:ollama"] < 1.0
    assert_nothing_left(moat_home)


def test_sigkill_then_clean_reaps_sandbox_processes(sandbox: SandboxRuntime, moat_home: Path,
                                                    tmp_path: Path) -> None:
    workspace = copy_example("service-redis", tmp_path)
    proc = start_moat(["run", "--runtime", "sandbox", str(workspace), "--", "sleep", "300"])
    run_id = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run")
    wait_for(lambda: json.loads((moat_home / "runs" / run_id / "metadata.json").read_text())["state"] == "running",
             what="the agent")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert sandbox_processes(moat_home), "SIGKILL leaves the sandbox's processes behind until reaped"
    listed = json.loads(run_moat(["list", "--json"]).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(run_id, "orphaned")]
    # Only the sandbox is looked at: what a container engine holds is not this test's business.
    clean = run_moat(["clean", "-f"], env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert clean.code == 0, clean.output
    assert sandbox_processes(moat_home) == []  # clean returns once they have ended
    assert_nothing_left(moat_home)


def test_without_an_engine_moat_chooses_the_sandbox_and_says_so(sandbox: SandboxRuntime, moat_home: Path,
                                                                 tmp_path: Path) -> None:
    result = run_moat(["run", str(copy_example("service-redis", tmp_path))],
                      env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert result.code == 0, result.output
    assert "no container engine answers: using the sandbox runtime" in result.stderr
    assert runs(moat_home)[0]["runtime"] == "sandbox"


def test_ctrl_c_during_the_agent_tears_down(sandbox: SandboxRuntime, moat_home: Path, tmp_path: Path) -> None:
    proc = start_moat(["run", "--runtime", "sandbox", str(copy_example("multi-service", tmp_path)),
                       "--", "sleep", "300"])
    run_id = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run")
    wait_for(lambda: json.loads((moat_home / "runs" / run_id / "metadata.json").read_text())["state"] == "running",
             timeout=90, what="the agent")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert_nothing_left(moat_home)


def test_secrets_stay_off_disk_and_off_command_lines(sandbox: SandboxRuntime, moat_home: Path,
                                                     tmp_path: Path) -> None:
    workspace = copy_example("service-redis", tmp_path)
    proc = start_moat(["run", "--runtime", "sandbox", str(workspace), "--", "sh", "-c",
                       'echo "pw=$MOAT_REDIS_PASSWORD"; sleep 30'])
    assert proc.stdout is not None
    password = proc.stdout.readline().strip().removeprefix("pw=")
    try:
        assert len(password) == 32
        [run] = runs(moat_home)
        for root in (moat_home / "sandbox", scratch_of(run["id"])):
            for path in root.rglob("*"):
                if path.is_file():
                    assert password.encode() not in path.read_bytes(), f"password in {path}"
        for pid, _ in procs.processes():  # every process on the host, not only the sandbox's
            with contextlib.suppress(OSError):
                assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), f"password in pid {pid}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert_nothing_left(moat_home)


def test_mysql_user_gets_its_database_and_a_missing_command_exits_127(sandbox: SandboxRuntime, moat_home: Path,
                                                                      tmp_path: Path) -> None:
    workspace = new_workspace(tmp_path)
    (workspace / "moat.yaml").write_text(
        "dependencies: [mysql, mysql-client]\nservices:\n  mysql:\n    env:\n"
        "      MYSQL_DATABASE: app\n      MYSQL_USER: bob\n      MYSQL_PASSWORD: bobs-password\n")
    script = ('MYSQL_PWD=bobs-password mysql -h mysql -u bob -N -e "create table t (a int); '
              'insert into t values (7); select a from t" app')
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "sh", "-c", script])
    assert result.code == 0, result.output
    assert result.stdout.strip() == "7"
    missing = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "no-such-command-here"])
    assert missing.code == 127
    assert_nothing_left(moat_home)


def test_what_the_sandbox_will_not_do_as_asked_is_said_first(sandbox: SandboxRuntime, moat_home: Path,
                                                             tmp_path: Path) -> None:
    workspace = new_workspace(tmp_path)
    (workspace / "moat.yaml").write_text(
        "dependencies: [redis]\nservices:\n  redis:\n    image: redis:7-alpine\n    memory: 64\n")
    result = run_moat(["run", "--runtime", "sandbox", str(workspace), "--", "true"])
    assert result.code == 0, result.output
    lines = result.stderr.splitlines()
    said = next(i for i, line in enumerate(lines) if "services.redis.image (redis:7-alpine) is not used: the sandbox"
                " runs the host's Redis" in line)
    assert said < next(i for i, line in enumerate(lines) if "redis ready" in line)  # before the run starts
    memory = [line for line in lines if "services.redis.memory" in line]
    assert memory == ([] if os.getuid() == 0 else [next(line for line in lines if "is not enforced" in line)])
    assert_nothing_left(moat_home)


def test_logs_follow_a_live_service_until_the_run_ends(sandbox: SandboxRuntime, moat_home: Path,
                                                       tmp_path: Path) -> None:
    workspace = copy_example("service-redis", tmp_path)
    proc = start_moat(["run", "--runtime", "sandbox", str(workspace), "--", "sh", "-c", "echo up; sleep 3"])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    follower = start_moat(["logs", "--service", "redis", "-f"])
    out, err = follower.communicate(timeout=60)  # ends when the run does
    proc.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert "Ready to accept connections" in out
    assert proc.returncode == 0
    assert_nothing_left(moat_home)
