"""Provisioning and the host cache, with the Ollama stand-in (moat-test/ollama-standin)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from moat.runtime.docker import DockerRuntime
from tests.conftest import skip_or_fail
from tests.helpers import (
    left_for,
    log_records,
    moat_command,
    run_moat,
    runs,
    start_moat,
    wait_for,
    write_workspace,
)

pytestmark = pytest.mark.engine


@pytest.fixture(autouse=True)
def _private_warm_cache(moat_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`moat cache list` and `clean` also show and remove warm templates: these tests' cache holds
    only what they pulled (the session's shared templates are other tests')."""
    monkeypatch.setenv("MOAT_WARM_CACHE", str(tmp_path / "warm-cache"))

STANDIN = "moat-test/ollama-standin:latest"


def ollama_workspace(path: Path, models: list[str], seconds: float = 1, **extra: str) -> Path:
    env = {"STANDIN_PULL_SECONDS": str(seconds), "STANDIN_PULL_BYTES": "2000000", **extra}
    config = (
        "dependencies: [ollama]\n"
        "services:\n"
        "  ollama:\n"
        f"    image: {STANDIN}\n"
        "    memory: 2048\n"
        f"    models: {json.dumps(models)}\n"
        f"    env: {json.dumps(env)}\n"
    )
    return write_workspace(path, config)


def provision_events(home: Path, run_id: str) -> list[dict[str, Any]]:
    return [r for r in log_records(home, run_id) if r.get("service") == "ollama"]


def test_first_run_pulls_second_run_finds_it_cached(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = ollama_workspace(tmp_path / "ws", ["qwen2.5-coder:1.5b"])
    first = run_moat(["run", str(workspace), "--", "true"])
    assert first.code == 0, first.output
    manifest = moat_home / "cache/ollama/models/manifests/registry.ollama.ai/library/qwen2.5-coder/1.5b"
    assert manifest.is_file()
    [run1] = runs(moat_home)
    assert any("qwen2.5-coder:1.5b pulled" in r["line"] for r in provision_events(moat_home, run1["id"]))

    second = run_moat(["run", str(workspace), "--", "true"])
    assert second.code == 0, second.output
    run2 = next(r for r in runs(moat_home) if r["id"] != run1["id"])
    assert "model qwen2.5-coder:1.5b cached" in second.stderr
    assert run2["timings"]["provision:ollama"] < 1.0
    listed = run_moat(["cache", "list", "--json"])
    [entry] = json.loads(listed.stdout)
    assert entry["service"] == "ollama" and entry["item"] == "qwen2.5-coder:1.5b"
    assert entry["size_bytes"] >= 2_000_000 and entry["last_used"]


def test_the_agent_can_use_the_pulled_model(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = ollama_workspace(tmp_path / "ws", ["tiny:1b"])
    (workspace / "moat.yaml").write_text((workspace / "moat.yaml").read_text().replace(
        "dependencies: [ollama]", "dependencies: [ollama, curl]"))
    script = ('curl -sf "$MOAT_OLLAMA_URL/api/generate" -d \'{"model":"tiny:1b","prompt":"hi","stream":false}\'')
    result = run_moat(["run", str(workspace), "--", "sh", "-c", script])
    assert result.code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["done"] is True and "hi" in answer["response"]


def test_concurrent_runs_pull_the_same_model_once(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspaces = [ollama_workspace(tmp_path / f"ws{i}", ["shared:7b"], seconds=3) for i in range(2)]
    procs = [start_moat(["run", str(w), "--", "true"]) for w in workspaces]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = [r["line"] for run in runs(moat_home) for r in provision_events(moat_home, run["id"])]
    assert sum("shared:7b pulled in" in line for line in lines) == 1, lines
    assert sum(("pulled by another run" in line) or ("shared:7b cached" in line) for line in lines) == 1, lines


def _pull_window(home: Path, run: dict[str, Any], item: str) -> tuple[str, str]:
    events = provision_events(home, run["id"])
    start = next(r["ts"] for r in events if r["line"].startswith(f"pulling model {item}"))
    end = next(r["ts"] for r in events if f"{item} pulled in" in r["line"])
    return start, end


def test_concurrent_runs_pull_into_one_cache_one_at_a_time(engine: DockerRuntime, moat_home: Path,
                                                            tmp_path: Path) -> None:
    # Two models may share blobs: two servers writing one blob at once would corrupt it. So runs that
    # share a cache pull one after the other, and the one that waits says so.
    a = ollama_workspace(tmp_path / "a", ["alpha:1b"], seconds=3)
    b = ollama_workspace(tmp_path / "b", ["beta:1b"], seconds=3)
    procs = [start_moat(["run", str(w), "--", "true"]) for w in (a, b)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    windows = {}
    for run in runs(moat_home):
        for item in ("alpha:1b", "beta:1b"):
            if any(item in r["line"] for r in provision_events(moat_home, run["id"])):
                windows[item] = _pull_window(moat_home, run, item)
    (a_start, a_end), (b_start, b_end) = windows["alpha:1b"], windows["beta:1b"]
    assert a_end <= b_start or b_end <= a_start, windows  # never at the same time
    waited = [line for _, err in outputs for line in err.splitlines() if "waiting for another run" in line]
    assert waited and "pulling into the ollama cache" in waited[0]
    # Every blob is whole: its name is the digest of its content.
    blobs = moat_home / "cache" / "ollama" / "models" / "blobs"
    for blob in blobs.iterdir():
        assert blob.name == "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest()


def test_item_timeout_is_reported_and_leaves_nothing(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = ollama_workspace(tmp_path / "ws", ["slow:1b"], seconds=30)
    text = (workspace / "moat.yaml").read_text() + "    provision_timeout: 1.5\n"
    (workspace / "moat.yaml").write_text(text)
    result = run_moat(["run", str(workspace), "--", "echo", "never"])
    assert result.code == 1, result.output
    assert "never" not in result.stdout
    assert "model 'slow:1b' was not ready within 1.5s (provision_timeout) while pulling it" in result.stderr
    assert "Raise services.ollama.provision_timeout" in result.stderr
    assert result.seconds < 30
    assert left_for(engine, runs(moat_home)[0]["id"]) == []


def test_failing_pull_names_the_item_and_its_output(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = ollama_workspace(tmp_path / "ws", ["x-does-not-exist:1b"])
    result = run_moat(["run", str(workspace), "--", "echo", "never"])
    assert result.code == 1, result.output
    assert "pulling model 'x-does-not-exist:1b' failed (exit 1)" in result.stderr
    assert "Error: pull model manifest: file does not exist" in result.stderr
    assert "services.ollama.models" in result.stderr
    assert "Traceback" not in result.stderr
    run = runs(moat_home)[0]
    assert run["state"] == "failed"
    assert left_for(engine, run["id"]) == []


@pytest.mark.parametrize("models", [["x; rm -rf /"], ["$(id)"], ["`id`"], ["a|b"], ["a && b"], ["-rf"], [""],
                                    ["llama3\n"]])
def test_injection_attempts_in_models_are_rejected_before_anything_starts(
        engine: DockerRuntime, moat_home: Path, tmp_path: Path, models: list[str]) -> None:
    workspace = ollama_workspace(tmp_path / "ws", models)
    result = run_moat(["run", str(workspace), "--", "true"])
    assert result.code == 2, result.output
    assert "services.ollama.models[0]: invalid model name" in result.stderr
    assert not (moat_home / "runs").exists()


def test_ctrl_c_while_pulling_tears_down(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = ollama_workspace(tmp_path / "ws", ["big:70b"], seconds=60)
    proc = start_moat(["run", str(workspace), "--", "true"])
    try:
        run_id = wait_for(lambda: runs(moat_home) and runs(moat_home)[0]["id"], what="the run")
        wait_for(lambda: any(r["line"].startswith("pulling model big:70b")
                             for r in provision_events(moat_home, run_id)), what="the pull to start")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert left_for(engine, run_id) == []
    listed = json.loads(run_moat(["cache", "list", "--json"]).stdout)
    assert listed == []  # an interrupted pull never looks complete


def test_ctrl_c_while_waiting_for_another_runs_pull(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    first = start_moat(["run", str(ollama_workspace(tmp_path / "a", ["same:1b"], seconds=8)), "--", "true"])
    try:
        wait_for(lambda: any(r["line"].startswith("pulling model same:1b")
                             for run in runs(moat_home) for r in provision_events(moat_home, run["id"])),
                 what="the first run's pull")
        first_id = runs(moat_home)[0]["id"]
        second = start_moat(["run", str(ollama_workspace(tmp_path / "b", ["same:1b"], seconds=8)), "--", "true"])

        def second_waits() -> str | None:
            for run in runs(moat_home):
                if run["id"] != first_id and any("waiting for another run" in r["line"]
                                                 for r in provision_events(moat_home, run["id"])):
                    return str(run["id"])
            return None

        second_id = wait_for(second_waits, what="the second run to wait for the lock")
        second.send_signal(signal.SIGINT)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 130, err
        assert left_for(engine, second_id) == []
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err  # the first run was not disturbed
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()


def test_cache_clean_removes_what_runs_wrote(engine: DockerRuntime, moat_home: Path, tmp_path: Path) -> None:
    workspace = ollama_workspace(tmp_path / "ws", ["one:1b", "two:1b"])
    assert run_moat(["run", str(workspace), "--", "true"]).code == 0
    assert len(json.loads(run_moat(["cache", "list", "--json"]).stdout)) == 2
    refused = run_moat(["cache", "clean"])  # no terminal to confirm on
    assert refused.code == 2 and "-f" in refused.stderr
    one = run_moat(["cache", "clean", "ollama", "--item", "one:1b", "-f"])
    assert one.code == 0, one.output
    assert [e["item"] for e in json.loads(run_moat(["cache", "list", "--json"]).stdout)] == ["two:1b"]
    everything = run_moat(["cache", "clean", "-f"])
    assert everything.code == 0, everything.output
    assert json.loads(run_moat(["cache", "list", "--json"]).stdout) == []
    assert list((moat_home / "cache" / "ollama").iterdir()) == []


def _as_user(uid: int) -> list[str]:
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={docker_gid}", "--"]


def test_an_unprivileged_user_owns_and_can_clean_the_cache(engine: DockerRuntime, tmp_path: Path) -> None:
    if os.getuid() != 0:
        skip_or_fail("switching to another user needs root")
    uid = 1000
    home = tmp_path / "user-home"
    home.mkdir()
    os.chown(home, uid, uid)
    workspace = ollama_workspace(tmp_path / "ws", ["mine:1b"])
    env = {**os.environ, "MOAT_HOME": str(home / ".moat"), "HOME": str(home)}
    run = subprocess.run([*_as_user(uid), *moat_command("run", str(workspace), "--", "true")], env=env,
                         capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr
    cache = home / ".moat" / "cache" / "ollama"
    owners = {p.stat().st_uid for p in cache.rglob("*")}
    assert owners == {uid}, "files the sidecar wrote as root were handed back to the user"
    # Files a sidecar left root-owned (e.g. a pull cut short) are still removable, via the engine.
    stray = cache / "models" / "blobs" / "sha256-partial-leftover"
    stray.write_text("x")
    os.chown(stray, 0, 0)
    (cache / "models" / "blobs").chmod(0o755)
    os.chown(cache / "models" / "blobs", 0, 0)
    clean = subprocess.run([*_as_user(uid), *moat_command("cache", "clean", "-f")], env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert clean.returncode == 0, clean.stderr
    assert list(cache.iterdir()) == []
