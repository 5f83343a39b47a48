"""`moat clean` (and the reaping every run does first) removes a dead run's private /tmp directory,
which its teardown never got to remove — and nothing but that directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moat.run import reaper
from moat.run.registry import Registry
from moat.run.store import RunStore
from tests.unit.fakes import FakeRuntime
from tests.unit.test_registry import record


def _scratch(root: Path, run_id: str) -> Path:
    path = root / f"moat-{run_id}"
    (path / "context").mkdir(parents=True)
    (path / "context" / "moat-context.md").write_text("the agent's context\n")
    return path


def test_an_orphaned_runs_scratch_directory_goes_and_a_finished_ones_stays(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "scratch"
    crashed, done = _scratch(root, "run_dead00000001"), _scratch(root, "run_done00000002")
    record(home, "run_dead00000001", "crashed", "2026-11-24T09:00:00Z", state="running", ended_at=None,
           scratch=str(crashed))
    record(home, "run_done00000002", "done", "2026-11-24T09:00:00Z", scratch=str(done))
    registry = Registry(RunStore(home))
    problems = reaper.remove(FakeRuntime(), reaper.find(FakeRuntime(), registry, finished=False))
    assert problems == []
    assert not crashed.exists()
    assert done.exists()  # its own teardown removed what it had to; a kept agent's files are `moat clean`'s


def test_a_record_pointing_elsewhere_removes_nothing(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "scratch"
    other = _scratch(root, "run_some00000009")  # another run's: the name must be this run's
    link = root / "moat-run_link00000003"
    link.symlink_to(other)  # a link in its place is not followed
    record(home, "run_dead00000001", "a", "2026-11-24T09:00:00Z", state="running", ended_at=None, scratch=str(other))
    record(home, "run_link00000003", "b", "2026-11-24T09:00:00Z", state="running", ended_at=None, scratch=str(link))
    record(home, "run_rel000000004", "c", "2026-11-24T09:00:00Z", state="running", ended_at=None,
           scratch="moat-run_rel000000004")
    reaper.remove(FakeRuntime(), reaper.find(FakeRuntime(), Registry(RunStore(home)), finished=False))
    assert (other / "context" / "moat-context.md").exists()
    assert link.is_symlink()


def test_only_this_users_directory_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, root = tmp_path / "home", tmp_path / "scratch"
    crashed = _scratch(root, "run_dead00000001")
    record(home, "run_dead00000001", "crashed", "2026-11-24T09:00:00Z", state="running", ended_at=None,
           scratch=str(crashed))
    uid = os.getuid() + 1
    monkeypatch.setattr(os, "getuid", lambda: uid)  # as if another user ran moat clean
    reaper.remove(FakeRuntime(), reaper.find(FakeRuntime(), Registry(RunStore(home)), finished=False))
    assert crashed.exists()


def test_destroy_removes_the_scratch_directory_before_the_record_that_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from moat.cli import runs as runs_cli

    home, root = tmp_path / "home", tmp_path / "scratch"
    kept = _scratch(root, "run_kept00000001")
    record(home, "run_kept00000001", "kept", "2026-11-24T09:00:00Z", scratch=str(kept))
    monkeypatch.setenv("MOAT_HOME", str(home))
    monkeypatch.setattr(runs_cli, "_runtime_of", lambda info: None)  # nothing on an engine to remove here
    result = CliRunner().invoke(runs_cli.destroy, ["run_kept00000001"])
    assert result.exit_code == 0, result.output
    assert not kept.exists() and not (home / "runs" / "run_kept00000001").exists()
