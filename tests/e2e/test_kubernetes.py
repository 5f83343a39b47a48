"""The Kubernetes runtime end to end, with ``podman kube play`` standing in for a cluster: the rendered
Pod of the multi-service example runs, its services answer, the agent's checks pass, its exit code
comes back, strict egress holds, and nothing of the run is left in podman."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.helpers import only_run, run_moat, start_moat, write_workspace

HOST_CAS = Path("/usr/local/share/ca-certificates")


@pytest.fixture
def podman_home(moat_home: Path) -> Path:
    if shutil.which("podman") is None:
        skip_or_fail("podman is not installed (make test installs it)")
    moat_home.mkdir(parents=True, exist_ok=True)
    (moat_home / "config.yaml").write_text("kubernetes:\n  engine: podman\n")
    return moat_home


def _pods() -> list[str]:
    done = subprocess.run(["podman", "pod", "ps", "--filter", "label=moat.run-id", "--format", "{{.Name}}"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def _env() -> dict[str, str]:
    return {"MOAT_BUILD_CA_CERTS": str(HOST_CAS)} if any(HOST_CAS.glob("*.crt")) else {}


def test_the_multi_service_pod_runs_strict_and_its_agent_checks_pass(
        engine: object, podman_home: Path, example: Callable[[str], Path], tmp_path: Path) -> None:
    workspace = example("multi-service")
    with (workspace / "moat.yaml").open("a") as handle:
        handle.write("network:\n  policy: strict\n  rules: [example.com]\n")
    # The agent's own check of strict egress: a listener this test runs on the host is not reachable.
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # every host address: no route at all must be the only reason it fails
    listener.listen()
    port = listener.getsockname()[1]
    host_ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
    (workspace / "egress.sh").write_text(
        "bash demo.sh || exit 1\n"
        f"if timeout 5 bash -c 'exec 3<>/dev/tcp/{host_ip}/{port}' 2>/dev/null; then echo EGRESS-OPEN; exit 1; fi\n"
        "echo egress-closed\n"
        "echo made-in-pod > made.txt\n"
        "exit 7\n")
    try:
        result = run_moat(["run", "--runtime", "kubernetes", str(workspace), "--", "bash", "egress.sh"],
                          env=_env(), timeout=600)
    finally:
        listener.close()
    assert result.code == 7, result.stderr
    for line in ("postgres: 3 (sum of visits)", "mysql: 42 (6*7)", "redis: 5 (counter)", "egress-closed"):
        assert line in result.stdout
    assert "EGRESS-OPEN" not in result.stdout
    assert _pods() == []
    runs = list((podman_home / "runs").iterdir())
    assert len(runs) == 1
    metadata = json.loads((runs[0] / "metadata.json").read_text())
    assert metadata["runtime"] == "kubernetes" and metadata["state"] == "exited" and metadata["exit_code"] == 7
    assert not (workspace / "made.txt").exists()  # the host's workspace is the agent's copy's source only
    assert "moat snapshot restore" in result.stderr
    restored = run_moat(["snapshot", "restore", metadata["id"], "--to", str(tmp_path / "out")])
    assert restored.code == 0, restored.stderr
    assert (tmp_path / "out" / "made.txt").read_text() == "made-in-pod\n"
    assert (tmp_path / "out" / "demo.sh").is_file()
    refused = run_moat(["destroy", metadata["id"]])  # extracted now: destroying is allowed
    assert refused.code == 0, refused.stderr


def test_dry_run_prints_the_manifests_with_every_secret_masked(podman_home: Path,
                                                               example: Callable[[str], Path]) -> None:
    workspace = example("multi-service")
    result = run_moat(["run", "--runtime", "kubernetes", "--dry-run", str(workspace)])
    assert result.code == 0, result.stderr
    assert "kind: Pod" in result.stdout and "kind: Secret" in result.stdout
    assert "'****'" in result.stdout and "secretKeyRef" in result.stdout
    assert _pods() == []


def _wait_for_pod(deadline_seconds: float = 120) -> str:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        pods = _pods()
        if pods:
            return pods[0]
        time.sleep(0.2)
    raise AssertionError("the run's pod never appeared")


def _wait_for_line(path: Path, text: str, deadline_seconds: float = 120) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_moat_stop_ends_a_running_pod_and_logs_show_what_it_printed(
        engine: object, podman_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "dependencies: [redis@7]\nservices:\n  redis:\n"
                                "    image: moat-test/redis:latest\n",
                                {"long.sh": "echo started-long; sleep 300\n"})
    process = start_moat(["run", "--runtime", "kubernetes", str(workspace), "--", "sh", "long.sh"], env=_env())
    try:
        _wait_for_pod()
        run_dir = next(iter((podman_home / "runs").iterdir()))
        _wait_for_line(run_dir / "logs.jsonl", "started-long")
        stopped = run_moat(["stop"])
        assert stopped.code == 0, stopped.stderr
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _pods() == []
    metadata = only_run(podman_home)
    assert metadata["state"] == "interrupted"
    logs = run_moat(["logs", metadata["id"]])
    assert "started-long" in logs.stdout
    redis_log = run_moat(["logs", metadata["id"], "--service", "redis"])
    assert redis_log.code == 0 and "Ready to accept connections" in redis_log.stdout


def test_clean_deletes_the_pod_of_a_run_whose_moat_was_killed(engine: object, podman_home: Path,
                                                              tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: killed\n", {"long.sh": "echo up; sleep 300\n"})
    process = start_moat(["run", "--runtime", "kubernetes", str(workspace), "--", "sh", "long.sh"], env=_env())
    try:
        pod = _wait_for_pod()
        run_dir = next(iter((podman_home / "runs").iterdir()))
        _wait_for_line(run_dir / "logs.jsonl", "up")
        process.send_signal(signal.SIGKILL)  # no teardown at all: the pod is left
        process.wait(10)
        assert _pods() == [pod]
        listed = run_moat(["clean", "--dry-run"])
        assert listed.code == 0 and pod in listed.stdout and "its run is" in listed.stdout
        cleaned = run_moat(["clean", "-f"])
        assert cleaned.code == 0, cleaned.stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for left in _pods():  # never leave a pod behind, whatever failed above
            subprocess.run(["podman", "pod", "rm", "-f", "-t", "0", left], capture_output=True, check=False)
    assert _pods() == []
    assert only_run(podman_home)["state"] == "failed"


def test_a_detached_run_returns_once_its_agent_runs_and_is_followed_to_its_end(
        engine: object, podman_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: detached\n",
                                {"job.sh": "echo working; sleep 3; echo done-working; exit 4\n"})
    started = run_moat(["run", "-d", "--runtime", "kubernetes", str(workspace), "--", "sh", "job.sh"], env=_env())
    assert started.code == 0, started.stderr
    run_id, name = started.stdout.split()
    assert name == "detached"
    assert run_id.startswith("run_")
    assert _pods() != []  # back at once: the agent runs on
    listed = run_moat(["list", "--json"])
    assert [r["state"] for r in json.loads(listed.stdout) if r["id"] == run_id] == ["running"]
    followed = run_moat(["logs", "-f", run_id], timeout=120)
    assert "working" in followed.stdout and "done-working" in followed.stdout
    deadline = time.monotonic() + 60
    while only_run(podman_home)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    metadata = only_run(podman_home)
    assert metadata["state"] == "exited" and metadata["exit_code"] == 4
    assert _pods() == []
