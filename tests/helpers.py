"""Shared test helpers: run the CLI as a user would, prepare example workspaces, inspect runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _load_localize() -> Any:
    """engine/localize.py (also used by `make demo`): examples → local test images."""
    spec = importlib.util.spec_from_file_location("moat_engine_localize", ROOT / "engine" / "localize.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_localize = _load_localize()
LOCAL_IMAGES: dict[str, str] = _localize.LOCAL_IMAGES
SERVICE_IMAGES = dict(LOCAL_IMAGES)  # all built by `make engine`


def localize_example(name: str, target: Path) -> Path:
    _localize.localize(EXAMPLES / name, target)
    share(target)
    return target
# Unprivileged owner for test workspaces when the suite runs as root (as CI does), so the agent
# (which never runs as root) can write there and the ownership rules can be checked.
WORKSPACE_UID = 1000


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def moat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "moat", *args]


def run_moat(args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
             timeout: float = 240) -> Result:
    start = time.monotonic()
    proc = subprocess.run(moat_command(*args), cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def start_moat(args: Sequence[str], *, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(moat_command(*args), cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_workspace(path: Path, config: str, files: Mapping[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "moat.yaml").write_text(config)
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    share(path)
    return path


def share(path: Path) -> None:
    """Give a workspace to an unprivileged owner when tests run as root (pytest's tmp is 0700)."""
    if os.getuid() != 0:
        return
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o055)  # let the agent's uid traverse
    for item in [path, *path.rglob("*")]:
        os.chown(item, WORKSPACE_UID, WORKSPACE_UID)


def runs(home: Path) -> list[dict[str, Any]]:
    found = []
    for meta in sorted((home / "runs").glob("*/metadata.json")):
        found.append(json.loads(meta.read_text()))
    return found


def only_run(home: Path) -> dict[str, Any]:
    found = runs(home)
    assert len(found) == 1, f"expected one run in {home}, found {len(found)}"
    return found[0]


def log_records(home: Path, run_id: str) -> list[dict[str, Any]]:
    path = home / "runs" / run_id / "logs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def left_for(runtime: Any, run_id: str) -> list[str]:
    """Everything on the engine still labelled with this run."""
    left = runtime.find_labelled({"moat.run-id": run_id})
    return [*left.containers, *left.networks, *left.volumes]


def metadata(home: Path, run_id: str) -> dict[str, Any]:
    return json.loads((home / "runs" / run_id / "metadata.json").read_text())
