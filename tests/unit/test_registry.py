"""Run resolution and derived states, over a run store written by hand (no engine)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moat.errors import UsageError
from moat.run.registry import Registry
from moat.run.store import RunStore

DEAD_PID = 2**22 + 12345  # above pid_max on Linux: never a live process


def record(home: Path, run_id: str, name: str, created: str, **extra: Any) -> None:
    directory = home / "runs" / run_id
    directory.mkdir(parents=True)
    meta = {"id": run_id, "name": name, "created_at": created, "state": "exited", "ended_at": created,
            "pid": DEAD_PID, "host": socket.gethostname(), "services": [], **extra}
    (directory / "metadata.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def owner() -> Iterator[int]:
    """A live process that looks like moat (liveness checks the command line, not just the pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "moat-owner"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def registry(tmp_path: Path, owner: int) -> Registry:
    home = tmp_path / "home"
    record(home, "run_aaaa00000001", "alpha", "2026-11-24T10:00:00Z")
    record(home, "run_aaaa00000002", "beta", "2026-11-24T11:00:00Z")
    record(home, "run_bbbb00000003", "alpha", "2026-11-24T12:00:00Z")
    record(home, "run_cccc00000004", "live", "2026-11-24T13:00:00Z", state="running", ended_at=None,
           pid=owner)
    record(home, "run_dddd00000005", "crashed", "2026-11-24T09:00:00Z", state="starting", ended_at=None)
    (home / "runs" / "not-a-run").mkdir()
    return Registry(RunStore(home))


def test_newest_first(registry: Registry) -> None:
    assert [r.id for r in registry.all()] == [
        "run_cccc00000004", "run_bbbb00000003", "run_aaaa00000002", "run_aaaa00000001", "run_dddd00000005"]


def test_resolution_by_id_name_and_prefix(registry: Registry) -> None:
    assert registry.resolve("run_aaaa00000002").name == "beta"
    assert registry.resolve("alpha").id == "run_bbbb00000003"  # the newest run of that name
    assert registry.resolve("bbbb").id == "run_bbbb00000003"  # prefix, with or without run_
    assert registry.resolve("run_cc").id == "run_cccc00000004"


def test_an_ambiguous_prefix_lists_the_candidates(registry: Registry) -> None:
    with pytest.raises(UsageError) as caught:
        registry.resolve("aaaa")
    assert "matches 2 runs" in caught.value.message
    assert "run_aaaa00000001 (alpha)" in caught.value.message and "run_aaaa00000002 (beta)" in caught.value.message


def test_an_unknown_run_is_a_usage_error(registry: Registry) -> None:
    with pytest.raises(UsageError) as caught:
        registry.resolve("zzz")
    assert caught.value.exit_code == 2 and "moat list --all" in caught.value.message


def test_states_are_derived_from_the_owner(registry: Registry) -> None:
    states = {r.name: (r.state, r.active) for r in registry.all()}
    assert states["live"] == ("running", True)  # its owner is alive
    assert states["crashed"] == ("orphaned", False)  # its owner is gone
    assert states["beta"] == ("exited", False)
    assert registry.latest(active=True).name == "live"
    assert registry.latest(active=False).name == "live"


def test_a_run_tearing_down_is_still_active(tmp_path: Path, owner: int) -> None:
    home = tmp_path / "home"
    record(home, "run_eeee00000006", "stopping", "2026-11-24T10:00:00Z", state="interrupted", ended_at=None,
           pid=owner)
    [run] = Registry(RunStore(home)).all()
    assert (run.state, run.active) == ("stopping", True)


def test_list_json_record_is_stable(registry: Registry) -> None:
    record_ = registry.resolve("beta").to_dict()
    assert set(record_) == {"id", "name", "state", "exit_code", "created_at", "started_at", "ended_at",
                            "age_seconds", "workspace", "runtime", "image", "services", "detached", "pid"}


def test_a_reused_pid_that_is_not_moat_does_not_keep_a_run_alive(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "120"])  # alive, but not moat
    try:
        home = tmp_path / "home"
        record(home, "run_ffff00000007", "reused", "2026-11-24T10:00:00Z", state="running", ended_at=None,
               pid=stranger.pid)
        [run] = Registry(RunStore(home)).all()
        assert run.state == "orphaned"
    finally:
        stranger.kill()
        stranger.wait()


def test_metadata_stays_valid_whatever_a_password_equals(tmp_path: Path) -> None:
    """Masking is for free text only: a password equal to a name, a number or the host leaves them be."""
    from moat.plan.model import Masker

    store = RunStore(tmp_path / "home")
    masker = Masker(frozenset({"postgres", "1", socket.gethostname(), "s3cret-value"}))
    record = store.create("run_abcdef012345", masker, name="postgres", command=["echo", "s3cret-value", "1"],
                          services=[{"name": "postgres"}])
    record.update(exit_code=1, error="failed with s3cret-value inside")
    saved = json.loads((record.dir / "metadata.json").read_text())
    assert saved["name"] == "postgres" and saved["services"] == [{"name": "postgres"}]
    assert saved["exit_code"] == 1 and saved["host"] == socket.gethostname()
    assert saved["command"] == ["echo", "****", "****"]  # free text: masked (a short one as a whole word)
    assert saved["error"] == "failed with **** inside"


def test_short_secrets_are_masked_only_as_whole_words() -> None:
    from moat.plan.model import Masker

    masker = Masker(frozenset({"pw", "a-long-secret"}))
    assert masker.text("pwd=pw; url=x:pw@h; a-long-secretX") == "pwd=****; url=x:****@h; ****X"


def test_a_malformed_record_reads_as_absent_fields_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A hand-edited or half-written metadata.json used to end `moat list/status/clean` in "internal error".
    from moat.cli.main import main

    home = tmp_path / "home"
    record(home, "run_badbadbadbad", "bad", "2026-01-01T00:00:00Z", state="running", ended_at=None,
           pid="x", pid_start=7, services="oops", host=["not", "a", "host"])
    record(home, "run_000000000001", "good", "2026-01-02T00:00:00Z")
    monkeypatch.setenv("MOAT_HOME", str(home))
    [bad] = [r for r in Registry(RunStore(home)).all() if r.name == "bad"]
    assert bad.owner_pid == 0 and bad.state == "orphaned" and bad.to_dict()["services"] == []
    assert main(["list", "--all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == {"bad", "good"}
