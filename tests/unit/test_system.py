"""moat system images|containers|clean-temp: what each lists from the runtimes, and which temporary
directories clean-temp takes (never a live run's, a link, another user's, or a young one)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import moat.cli.system as system_cli
from moat.cli.main import main
from moat.runtime.base import ContainerInfo, EngineObject, ImageInfo

NOW = time.time()


@dataclass
class StubRuntime:
    name: str
    image_list: list[ImageInfo] = field(default_factory=list)
    container_list: list[ContainerInfo] = field(default_factory=list)

    def images(self, repository: str) -> list[ImageInfo]:
        assert repository == "moat/run"
        return self.image_list

    def containers(self, key: str) -> list[ContainerInfo]:
        return [c for c in self.container_list if key in c.labels]

    def objects_with_label(self, key: str) -> list[EngineObject]:
        return [EngineObject("container", c.id, c.labels) for c in self.container_list if key in c.labels]


@pytest.fixture
def runtimes(monkeypatch: pytest.MonkeyPatch) -> list[StubRuntime]:
    from moat.runtime import select

    now = time.time()  # ages are relative to the test, not to when the module was imported
    found = [StubRuntime("sandbox", container_list=[
                ContainerInfo("c" * 32, "moat-agent-run_aaaaaaaaaaaa", "", "running", now - 90,
                              {"moat.run-id": "run_aaaaaaaaaaaa"})]),
             StubRuntime("docker", image_list=[
                ImageInfo("sha256:" + "1" * 64, ("moat/run:0123456789abcdef",), 2_000_000, False, {}, now - 7200)],
                container_list=[ContainerInfo("d" * 64, "moat-svc-run_bbbbbbbbbbbb-postgres", "postgres:16",
                                              "exited", now - 30, {"moat.run-id": "run_bbbbbbbbbbbb"})])]
    monkeypatch.setattr(select, "available", lambda home: found)
    return found


def _moat(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["system", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_images_lists_each_runtimes_agent_images(capsys: pytest.CaptureFixture[str], runtimes: object) -> None:
    code, out, _ = _moat(capsys, "images")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["IMAGE", "ID", "TAG", "RUNTIME", "SIZE", "CREATED"]
    assert row.split()[:3] == ["111111111111", "moat/run:0123456789abcdef", "docker"] and "2h ago" in row
    (image,) = json.loads(_moat(capsys, "images", "--json")[1])
    assert image["tag"] == "moat/run:0123456789abcdef" and image["size"] == 2_000_000
    assert image["runtime"] == "docker" and image["created"].endswith("+00:00")


def test_containers_lists_every_runtimes_containers(capsys: pytest.CaptureFixture[str], runtimes: object) -> None:
    code, out, _ = _moat(capsys, "containers", "--json")
    assert code == 0
    listed = {(c["name"], c["runtime"], c["status"], c["run_id"]) for c in json.loads(out)}
    assert listed == {("moat-agent-run_aaaaaaaaaaaa", "sandbox", "running", "run_aaaaaaaaaaaa"),
                      ("moat-svc-run_bbbbbbbbbbbb-postgres", "docker", "exited", "run_bbbbbbbbbbbb")}
    table = _moat(capsys, "containers")[1].splitlines()
    assert len(table) == 3 and "1m ago" in table[1] and "30s ago" in table[2]


def _scratch(root: Path, run_id: str, age: float) -> Path:
    path = root / f"moat-{run_id}"
    path.mkdir()
    (path / "context").mkdir()
    os.utime(path, (NOW - age, NOW - age))
    return path


def test_clean_temp_takes_only_old_directories_of_runs_that_are_over(tmp_path: Path) -> None:
    old = _scratch(tmp_path, "run_000000000001", 7200)
    young = _scratch(tmp_path, "run_000000000002", 60)
    live = _scratch(tmp_path, "run_000000000003", 7200)
    (tmp_path / "moat-run_nothex000000").mkdir()  # not moat's name
    (tmp_path / "moat-run_000000000004").symlink_to(old)  # a link: never
    (tmp_path / "moat-run_000000000005").write_text("a file")
    found = system_cli.leftover_directories(tmp_path, 3600, {"run_000000000003"}, NOW)
    assert found == [old]
    assert system_cli.leftover_directories(tmp_path, 0, set(), NOW) == [old, young, live]


def test_clean_temp_removes_them_after_asking(capsys: pytest.CaptureFixture[str], runtimes: object,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir reads TMPDIR again
    old = _scratch(tmp_path, "run_000000000001", 7200)
    live = _scratch(tmp_path, "run_aaaaaaaaaaaa", 7200)  # a container of it runs: kept
    code, out, _ = _moat(capsys, "clean-temp", "--dry-run")
    assert code == 0 and str(old) in out and str(live) not in out and "would be removed" in out
    assert old.exists()
    code, _, err = _moat(capsys, "clean-temp")
    assert code == 2 and "add -f" in err and old.exists()  # no terminal to confirm on
    code, out, _ = _moat(capsys, "clean-temp", "-f", "--min-age", "1h30m")
    assert code == 0 and "Removed 1 of 1" in out
    assert not old.exists() and live.exists()
    code, _, err = _moat(capsys, "clean-temp", "--min-age", "soon")
    assert code == 2 and "not a duration" in err


def test_a_directory_a_process_names_is_in_use(tmp_path: Path) -> None:
    import subprocess

    busy = _scratch(tmp_path, "run_0000000000b1", 7200)
    # One process naming the directory on its command line, as a sandbox's bwrap names its binds.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(busy)])
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 10
    while str(busy).encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # until it has exec'd
    try:
        assert system_cli.leftover_directories(tmp_path, 3600, set(), NOW) == []
    finally:
        process.kill()
        process.wait()
    assert system_cli.leftover_directories(tmp_path, 3600, set(), NOW) == [busy]
