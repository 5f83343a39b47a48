"""The sandbox runtime against the host's real programs: each protocol operation on containers built
from real plans, who its processes are, what they can reach, and that nothing outlives removal."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moat.catalog import load_catalog
from moat.errors import EngineError
from moat.masking import Masker
from moat.plan.build import RunRequest, build_plan
from moat.plan.identity import Identity
from moat.plan.model import Plan
from moat.runtime.base import ContainerNotRunning, NotFound, ProgramNotFound
from moat.runtime.sandbox import SandboxRuntime, procs
from moat.runtime.sandbox.services import find_binary
from moat.services.readiness import ReadinessError, wait_ready
from tests.conftest import IN_CI
from tests.helpers import ROOT, WORKSPACE_UID, share
from tests.unit.support import parse

pytestmark = pytest.mark.sandbox

STANDIN = ROOT / "engine" / "images" / "ollama-standin" / "ollama.py"
PROGRAMS = {"postgres": ("initdb", "postgres", "psql"), "mysql": ("mariadb-install-db", "mariadbd", "mysql"),
            "redis": ("redis-server", "redis-cli")}


def sandbox_problem() -> str | None:
    try:
        SandboxRuntime(Path("/nonexistent")).ping()
        for name, programs in PROGRAMS.items():
            recipe = load_catalog().service(name).sandbox  # type: ignore[union-attr]
            assert recipe is not None
            for program in programs:
                find_binary(program, recipe)
    except EngineError as exc:
        return f"{exc.message} ({exc.hint})"
    return None


@pytest.fixture(scope="session")
def sandbox_host() -> None:
    problem = sandbox_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and the sandbox tests cannot run: {problem}; run `make sandbox`", pytrace=False)
        pytest.skip(f"the sandbox runtime cannot run here: {problem}; run `make sandbox`")


def identity() -> Identity:
    """Who a run's processes are: as root (CI), the workspace's owner, an unprivileged uid."""
    return Identity(WORKSPACE_UID, WORKSPACE_UID) if os.getuid() == 0 else Identity(os.getuid(), os.getgid())


@dataclass
class Pod:
    runtime: SandboxRuntime
    plan: Plan
    home: Path
    workspace: Path
    ids: dict[str, str] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)

    def start(self, name: str) -> str:
        spec = next(s for s in self.plan.services if s.name == name)
        cid = self.runtime.create_container(spec.container, {"moat.owner-pid": str(os.getpid())})
        self.ids[name] = cid
        self.runtime.start_container(cid)
        return cid

    def ready(self, name: str) -> float:
        spec = next(s for s in self.plan.services if s.name == name)
        return wait_ready(self.runtime, self.ids[name], spec, self.plan.network, threading.Event(),
                          Masker(self.plan.secrets)).seconds

    def agent(self, *command: str, **changes: object) -> tuple[int, str, str]:
        """Run the plan's agent with ``command``: (exit code, stdout, stderr)."""
        cid = self.start_agent(*command, **changes)
        out: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        for chunk in self.runtime.attach(cid):
            out[chunk.stream] += chunk.data
        return self.runtime.wait(cid), out["stdout"].decode(), out["stderr"].decode()

    def start_agent(self, *command: str, **changes: object) -> str:
        from dataclasses import replace

        spec = replace(self.plan.agent, command=command, **changes)  # type: ignore[arg-type]
        cid = self.runtime.create_container(spec, {})
        self.agents.append(cid)
        self.runtime.start_container(cid)
        return cid

    def remove(self) -> None:
        for cid in [*self.agents, *self.ids.values()]:
            self.runtime.remove_container(cid)
        self.runtime.remove_network(self.plan.network)


def assert_gone(home: Path, scratch: Path, run_id: str) -> None:
    """Nothing of the run is left: no process, record, scratch directory or cgroup."""
    from moat.ownership import home_id

    assert not SandboxRuntime(home).records.all(), "records left"
    assert not scratch.exists(), "scratch directory left"
    for base in (Path("/sys/fs/cgroup/memory/moat"), Path("/sys/fs/cgroup/cpu/moat")):
        assert not (base / run_id).exists(), "cgroup left"
    tag = f"moat-sandbox:{home_id(home)}:".encode()

    def tagged() -> list[int]:
        left = []
        for pid, _ in procs.processes():
            with contextlib.suppress(OSError):
                if tag in Path(f"/proc/{pid}/cmdline").read_bytes():
                    left.append(pid)
        return left

    # Killed processes take a moment to be gone (their exit, their reaping): a few seconds, never more.
    deadline = time.monotonic() + 5
    while tagged() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tagged() == [], f"processes left: {tagged()}"


@pytest.fixture
def make_pod(sandbox_host: None, tmp_path: Path) -> Iterator[Callable[..., Pod]]:
    made: list[Pod] = []

    def make(config: str = "", *, command: tuple[str, ...] = ("true",)) -> Pod:
        workspace = tmp_path / f"ws{len(made)}"
        workspace.mkdir()
        share(workspace)
        home = tmp_path / f"home{len(made)}"
        request = RunRequest(workspace=workspace, command=command, identity=identity(),
                             invoker=(os.getuid(), os.getgid()), home=home, scratch_root=tmp_path,
                             runtime="sandbox")
        plan = build_plan(parse(config), request, load_catalog())
        runtime = SandboxRuntime(home, identity())
        runtime.create_network(plan.network, plan.labels, str(plan.scratch))
        write_agent_files(plan)
        pod = Pod(runtime, plan, home, workspace)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        pod.remove()
        assert_gone(pod.home, pod.plan.scratch, pod.plan.run_id)


def uids_of(pod: Pod) -> set[int]:
    """The host uid of every process of the run (holder, services, agents, their children)."""
    from moat.ownership import home_id

    tag = f"moat-sandbox:{home_id(pod.home)}:".encode()
    inits = [procs.Proc.from_json(r.get("init")) for r in pod.runtime.records.all()]
    found = set()
    for pid, stat in procs.processes():
        with contextlib.suppress(OSError):
            mine = tag in Path(f"/proc/{pid}/cmdline").read_bytes() or any(
                i is not None and stat.sid == i.pid for i in inits)
            if mine:
                status = Path(f"/proc/{pid}/status").read_text()
                found.add(int(status.split("Uid:")[1].split()[1]))  # effective uid
    return found


# --- identity: never host root ---------------------------------------------------------------------


def test_every_process_runs_as_the_identity_and_the_agent_is_not_root(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [redis]\n")
    pod.start("redis")
    pod.ready("redis")
    cid = pod.start_agent("sleep", "30")
    try:
        assert uids_of(pod) == {identity().uid}
    finally:
        pod.runtime.remove_container(cid)
    probe = ("id -u; echo made > /workspace/made.txt && echo wrote;"
             " cat /etc/shadow >/dev/null 2>&1 && echo read-shadow; ls /root >/dev/null 2>&1 && echo listed-root;"
             " touch /etc/x 2>/dev/null && echo wrote-etc; exit 0")
    code, out, err = pod.agent("sh", "-c", probe)
    assert code == 0, err
    assert out.split() == [str(identity().uid), "wrote"]
    made = pod.workspace / "made.txt"
    assert (made.stat().st_uid, made.stat().st_gid) == (identity().uid, identity().gid)


def write_agent_files(plan: Plan) -> None:
    """What the run's pod writes before the agent's container (its context file), readable by it."""
    for path, text in plan.agent.files:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        Path(path).chmod(0o644)


def test_a_root_identity_is_refused(sandbox_host: None, tmp_path: Path) -> None:
    runtime = SandboxRuntime(tmp_path / "home", Identity(0, 0))
    with pytest.raises(EngineError, match="never runs a run's processes as root"):
        runtime.create_network("moat-run_root", {}, str(tmp_path / "scratch"))


# --- services: one process, set up then served; quoting -------------------------------------------


def test_start_returns_at_once_and_readiness_covers_setup(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [postgres]\n")
    started = time.monotonic()
    cid = pod.start("postgres")
    assert time.monotonic() - started < 0.5  # initdb has not run yet: it is the container's first job
    assert pod.runtime.state(cid).running
    waited = pod.ready("postgres")
    assert waited > 0.2  # initdb alone takes longer: the wait counted it
    assert "database system is ready to accept connections" in pod.runtime.logs(cid)


def test_a_short_ready_timeout_counts_initdb(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [postgres]\nservices:\n  postgres:\n    ready_timeout: 0.1\n")
    pod.start("postgres")
    with pytest.raises(ReadinessError, match="was not ready after"):
        pod.ready("postgres")


def test_a_failing_setup_is_a_container_that_exited_with_its_log(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [postgres]\nservices:\n  postgres:\n    env: {POSTGRES_DB: template1}\n")
    cid = pod.start("postgres")
    with pytest.raises(ReadinessError) as info:
        pod.ready("postgres")
    assert "exited with code 1" in info.value.message
    assert 'database "template1" already exists' in info.value.message
    assert pod.runtime.state(cid).exit_code == 1


AWKWARD = "sp ace\"quote\\back'tick`$(dollar)"


def test_redis_password_with_spaces_quotes_and_backslashes(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod(f"dependencies: [redis]\nservices:\n  redis:\n    env:\n      REDIS_PASSWORD: {_yaml(AWKWARD)}\n")
    cid = pod.start("redis")
    pod.ready("redis")
    ok = pod.runtime.exec(cid, ("redis-cli", "--no-auth-warning", "PING"), {"REDISCLI_AUTH": AWKWARD})
    assert ok.output.strip() == "PONG"
    wrong = pod.runtime.exec(cid, ("redis-cli", "--no-auth-warning", "PING"), {"REDISCLI_AUTH": "sp"})
    assert "WRONGPASS" in wrong.output


def test_mysql_passwords_and_names_are_quoted_for_sql(make_pod: Callable[..., Pod]) -> None:
    config = (f"dependencies: [mysql]\nservices:\n  mysql:\n    env:\n      MYSQL_ROOT_PASSWORD: {_yaml(AWKWARD)}\n"
              f"      MYSQL_DATABASE: {_yaml('my`db')}\n      MYSQL_USER: {_yaml(AWKWARD)}\n"
              f"      MYSQL_PASSWORD: {_yaml(AWKWARD + 'x')}\n")
    pod = make_pod(config)
    cid = pod.start("mysql")
    pod.ready("mysql")
    query = ("mysql", "--protocol=TCP", "-h", "mysql", "-u", AWKWARD, "-N", "-e", "select database()", "my`db")
    result = pod.runtime.exec(cid, query, {"MYSQL_PWD": AWKWARD + "x"})
    assert (result.exit_code, result.output.strip()) == (0, "my`db"), result.output


def _yaml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the protocol: exec, signals, logs, environment -----------------------------------------------


def test_exec_of_a_missing_program_and_in_a_stopped_container(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [redis]\n")
    cid = pod.start("redis")
    pod.ready("redis")
    with pytest.raises(ProgramNotFound) as info:
        pod.runtime.exec(cid, ("no-such-program-here", "x"), {})
    assert info.value.program == "no-such-program-here"
    assert pod.runtime.exec(cid, ("sh", "-c", "exit 127"), {}).exit_code == 127  # its own 127 is not that
    pod.runtime.stop_container(cid, 5)
    with pytest.raises(ContainerNotRunning):
        pod.runtime.exec(cid, ("true",), {})
    with pytest.raises(NotFound):
        pod.runtime.state("no-such-container")


def test_signal_reaches_the_agent_and_keeps_its_exit_code(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod()
    cid = pod.start_agent("sh", "-c", "trap 'echo got-term; exit 7' TERM; echo up; while :; do sleep 0.05; done")
    chunks = pod.runtime.attach(cid)
    first = next(chunks)
    assert first.data.startswith(b"up")
    pod.runtime.signal(cid, signal.SIGTERM)
    rest = b"".join(c.data for c in chunks)
    assert pod.runtime.wait(cid) == 7 and b"got-term" in rest


def test_stop_is_sigterm_then_sigkill(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod()
    cid = pod.start_agent("sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done")
    next(pod.runtime.attach(cid))
    started = time.monotonic()
    pod.runtime.stop_container(cid, 0.5)
    assert 0.4 < time.monotonic() - started < 5
    state = pod.runtime.state(cid)
    assert not state.running and state.exit_code == 137


def test_follow_logs_until_the_service_stops_and_env_from_another_process(make_pod: Callable[..., Pod]) -> None:
    pod = make_pod("dependencies: [redis]\nservices:\n  redis:\n    env: {REDIS_PASSWORD: follow-me-pw}\n")
    cid = pod.start("redis")
    pod.ready("redis")
    other = SandboxRuntime(pod.home)  # as `moat logs --service redis -f` sees it
    assert other.container_env(cid)["REDIS_PASSWORD"] == "follow-me-pw"
    lines: list[str] = []
    follower = threading.Thread(target=lambda: lines.extend(other.follow_logs(cid, tail=5)))
    follower.start()
    time.sleep(0.3)
    assert follower.is_alive()  # still following a live service
    pod.runtime.stop_container(cid, 5)
    follower.join(10)
    assert not follower.is_alive()
    assert any("Ready to accept connections" in line for line in lines)
    assert any("ready to exit" in line.lower() for line in lines)  # written while it stopped


# --- isolation and secrets -------------------------------------------------------------------------


def test_isolation_of_the_agent(make_pod: Callable[..., Pod]) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    pod = make_pod("dependencies: [redis]\n")
    pod.start("redis")
    pod.ready("redis")
    probe = f"""
import os, socket
def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return str(exc.errno)
print("host", connect("127.0.0.1", {port}))
print("routes", len(open("/proc/net/route").read().splitlines()) - 1)
print("redis", connect("redis", 6379))
open("/tmp/moat-sandbox-private", "w").write("x")
print("pids", len([p for p in os.listdir("/proc") if p.isdigit()]))
"""
    try:
        code, out, err = pod.agent("python3", "-c", probe)
    finally:
        server.close()
    assert code == 0, err
    seen = dict(line.split(" ", 1) for line in out.splitlines())
    assert seen == {"host": "111", "routes": "0", "redis": "connected", "pids": seen["pids"]}
    assert int(seen["pids"]) < 5
    assert not Path("/tmp/moat-sandbox-private").exists()


def test_secrets_stay_off_disk_and_command_lines(make_pod: Callable[..., Pod]) -> None:
    secret = "pw-never-on-disk-4711"
    pod = make_pod("dependencies: [postgres, mysql, redis]\nservices:\n"
                   f"  postgres:\n    env: {{POSTGRES_PASSWORD: {secret}}}\n"
                   f"  mysql:\n    env: {{MYSQL_ROOT_PASSWORD: {secret}}}\n"
                   f"  redis:\n    env: {{REDIS_PASSWORD: {secret}}}\n")
    for name in ("postgres", "mysql", "redis"):
        pod.start(name)
    for name in ("postgres", "mysql", "redis"):
        pod.ready(name)
    for root in (pod.home, pod.plan.scratch):
        for path in root.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"the password is in {path}"
    for path in [pod.home / "sandbox", *(pod.home / "sandbox").rglob("*")]:  # moat's records: private
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    for pid, _ in procs.processes():
        with contextlib.suppress(OSError):
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), f"password in pid {pid}"


def test_a_service_writes_its_host_cache_under_a_closed_moat_home(make_pod: Callable[..., Pod], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ollama").symlink_to(STANDIN)  # the clearly named stand-in plays `ollama` here
    share(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    pod = make_pod("dependencies: [ollama]\nservices:\n  ollama:\n"
                   "    env: {STANDIN_PULL_SECONDS: '0.1', STANDIN_PULL_BYTES: '1000'}\n")
    cid = pod.start("ollama")
    pod.ready("ollama")
    assert (pod.home.stat().st_mode & 0o777) == 0o700  # the identity cannot pass through MOAT_HOME
    pulled = pod.runtime.exec(cid, ("ollama", "pull", "tiny:1b"), {})
    assert pulled.exit_code == 0, pulled.output
    manifest = pod.home / "cache/ollama/models/manifests/registry.ollama.ai/library/tiny/1b"
    assert manifest.is_file() and manifest.stat().st_uid == identity().uid
    listed = pod.runtime.exec(cid, ("ollama", "list"), {})
    assert "tiny:1b" in listed.output


def test_a_missing_agent_command_exits_127(make_pod: Callable[..., Pod]) -> None:
    code, _, err = make_pod().agent("no-such-command-here")
    assert code == 127 and "not found" in err


def test_a_signal_sent_as_the_agents_turn_comes_reaches_it(make_pod: Callable[..., Pod]) -> None:
    """The run passes signals to the agent from the moment its turn comes, an instant before its
    start: a Ctrl-C then was lost and the run hung on an agent that never heard of it."""
    pod = make_pod()
    from dataclasses import replace

    cid = pod.runtime.create_container(replace(pod.plan.agent, command=("sleep", "300")), {})
    pod.agents.append(cid)
    pod.runtime.signal(cid, signal.SIGINT)
    pod.runtime.start_container(cid)
    guard = threading.Timer(10, pod.runtime.stop_container, (cid, 0))  # a lost signal: 137, not a hang
    guard.start()
    try:
        assert pod.runtime.wait(cid) == 130
    finally:
        guard.cancel()


def test_the_agent_cannot_read_moat_home_even_when_it_could(sandbox_host: None, tmp_path: Path) -> None:
    """A user who runs moat on their own workspace is the agent's identity: without hiding, the agent
    could read the credential store and its key, and open the proxy's control socket."""
    import shutil
    import tempfile

    who = identity()
    shared = Path(tempfile.mkdtemp(prefix="moat-hide-", dir="/var/tmp"))  # not the agent's own /tmp
    try:
        os.chmod(shared, 0o755)
        home = shared / "moat-home"
        (home / "credentials").mkdir(parents=True)
        secret = home / "credentials" / ".key"
        secret.write_text("the-encryption-key\n")
        for path in (home, home / "credentials", secret):
            os.chown(path, who.uid, who.gid)
        workspace = tmp_path / "ws"
        workspace.mkdir()
        share(workspace)
        request = RunRequest(workspace=workspace, command=("true",), identity=who, invoker=(os.getuid(), os.getgid()),
                             home=home, scratch_root=tmp_path, runtime="sandbox")
        plan = build_plan(parse(""), request, load_catalog())
        runtime = SandboxRuntime(home, who)
        runtime.create_network(plan.network, plan.labels, str(plan.scratch))
        write_agent_files(plan)
        pod = Pod(runtime, plan, home, workspace)
        try:
            # Readable from the host by the identity: only the sandbox's view hides it.
            assert Path(secret).read_text() == "the-encryption-key\n"
            code, out, err = pod.agent("sh", "-c", f"ls -A {home}; cat {secret} 2>&1; echo done")
        finally:
            pod.remove()
        assert code == 0, err
        assert "the-encryption-key" not in out and out.strip().endswith("done")
        assert out.startswith("cat: ") and "No such file or directory" in out  # `ls -A`: an empty directory
    finally:
        shutil.rmtree(shared)


def test_the_agents_own_directory_is_bound_by_path_and_a_closed_one_is_said(make_pod: Callable[..., Pod],
                                                                            tmp_path: Path) -> None:
    """A directory moat made for the agent (its sessions): written as the agent's user, bound by its
    path (no descriptor left open in the agent: it would be a handle up the host's tree, out of its
    view). Under a MOAT_HOME closed to that user, the run says so before the agent starts."""
    from moat.plan.containers import Mount

    pod = make_pod()
    parent = tmp_path / "open"
    (parent / "sessions").mkdir(parents=True)
    share(parent / "sessions")
    kept = parent / "sessions" / "ws"
    mount = Mount(str(kept), "/tmp/kept", create=True, owner=(identity().uid, identity().gid))
    script = "echo transcript > /tmp/kept/s.jsonl && for f in /proc/$$/fd/*; do readlink $f; done; true"
    code, out, err = pod.agent("sh", "-c", script, mounts=(*pod.plan.agent.mounts, mount))
    assert code == 0, err
    assert (kept / "s.jsonl").read_text() == "transcript\n" and (kept / "s.jsonl").stat().st_uid == identity().uid
    assert not [line for line in out.splitlines() if "sessions" in line], out  # nothing open on it
    if os.getuid() == 0 and identity().uid != 0:
        closed = Mount(str(pod.home / "sessions" / "ws"), "/tmp/kept", create=True)
        with pytest.raises(EngineError, match=r"cannot reach .*, where moat keeps its sessions"):
            pod.start_agent("true", mounts=(*pod.plan.agent.mounts, closed))
