"""The run store and private files: modes, an existing MOAT_HOME left alone, a full disk."""

from __future__ import annotations

import errno
import json
import stat
from pathlib import Path

import pytest

from moat import files
from moat.errors import EXIT_USAGE, UsageError
from moat.files import private_dir
from moat.masking import Masker
from moat.run.store import RunStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_makes_every_missing_level_0700_and_leaves_existing_ones_alone(tmp_path: Path) -> None:
    existing = tmp_path / "home"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    private_dir(existing / "runs" / "run_1")
    assert mode(existing) == 0o755  # a MOAT_HOME the user made is not ours to chmod
    assert mode(existing / "runs") == 0o700 and mode(existing / "runs" / "run_1") == 0o700


def test_a_run_record_is_private(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "home")
    record = store.create("run_1", Masker())
    record.log("stdout", "hello")
    record.write_file("services/redis.log", "log")
    record.close()
    for path in [tmp_path / "home", *(tmp_path / "home").rglob("*")]:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_a_full_moat_home_is_a_usage_error_before_anything_starts(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("moat.run.store.write_private", full)
    with pytest.raises(UsageError) as info:
        RunStore(tmp_path / "home").create("run_1", Masker())
    assert info.value.exit_code == EXIT_USAGE
    assert "No space left on device" in info.value.message and "Nothing was started" in (info.value.hint or "")
    assert not (tmp_path / "home" / "runs" / "run_1").exists()


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def write(self, _text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", Full)
    with pytest.raises(OSError):
        files.write_private(tmp_path / "metadata.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_record_writes_fail_once_and_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    record = RunStore(tmp_path / "home").create("run_1", Masker(), on_failure=said.append)

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("moat.run.store.write_private", full)
    monkeypatch.setattr("moat.run.store.overwrite_private", full)
    record.update(state="running")
    record.update(state="exited")
    assert len(said) == 1 and "No space left on device" in said[0]
    assert record.failure is not None


def test_a_full_disk_still_gets_the_outcome_into_the_old_record(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # No room for a new copy of metadata.json: the old one's blocks take the run's outcome.
    said: list[str] = []
    record = RunStore(tmp_path / "home").create("run_1", Masker(), on_failure=said.append)

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("moat.run.store.write_private", full)
    record.update(state="exited", exit_code=0)
    saved = json.loads((tmp_path / "home" / "runs" / "run_1" / "metadata.json").read_text())
    assert (saved["state"], saved["exit_code"]) == ("exited", 0)
    assert said == [] and record.failure is None
