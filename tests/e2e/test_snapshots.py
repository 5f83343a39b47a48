"""Snapshots and volume workspaces for real: a run's pre-run snapshot restores the workspace as it
was; a volume-mode run's changes stay off the host until restored, and the restore equals what the
agent wrote (checksums, its commit included); destroying such a run without a snapshot needs -f."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_moat, runs, share, write_workspace


def _digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not str(p.relative_to(root)).startswith(skip)}


@pytest.mark.engine
def test_a_pre_run_snapshot_restores_the_workspace_as_it_was(engine: object, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "name: snap\n",
                                {"a.txt": "original\n", ".gitignore": "cache/\n"})
    (workspace / "cache").mkdir()
    (workspace / "cache" / "big").write_text("ignored: never snapshotted, never removed\n")
    share(workspace)
    before = _digest(workspace)
    result = run_moat(["run", "--runtime", "docker", str(workspace), "--", "sh", "-c",
                       "echo ruined > a.txt; echo junk > new.txt; rm .gitignore"])
    assert result.code == 0, result.output
    run_id = runs(moat_home)[0]["id"]
    [snap] = json.loads(run_moat(["snapshot", "list", run_id, "--json"]).stdout)
    assert snap["type"] == "pre-run" and snap["files"] == 3  # moat.yaml, a.txt, .gitignore
    restored = run_moat(["snapshot", "restore", run_id, "-f"])
    assert restored.code == 0, restored.output
    assert _digest(workspace) == before and not (workspace / "new.txt").exists()
    taken = run_moat(["snapshot", run_id, "--label", "by-hand"])
    assert taken.code == 0 and taken.stdout.startswith("snap_")
    out = tmp_path / "out"
    assert run_moat(["snapshot", "restore", run_id, "--to", str(out)]).code == 0
    assert _digest(out) == _digest(workspace, skip=("cache",))
    refused = run_moat(["snapshot", "restore", run_id, "--to", str(out)])
    assert refused.code == 2 and "not an empty directory" in refused.stderr


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-c", "user.email=t@example.invalid", "-c", "user.name=t",
                           *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


AGENT = """
set -eu
test ! -e node_modules  # excluded: not copied
echo "agent's version" > src/app.py
mkdir -p out && head -c 100000 /dev/urandom > out/data.bin
git -c user.email=agent@example.invalid -c user.name=agent commit -qam "agent's commit"
sha256sum src/app.py out/data.bin > /workspace/sums.txt
"""


@pytest.mark.engine
def test_a_volume_workspace_keeps_the_host_untouched_until_restored(engine: object, moat_home: Path,
                                                                    tmp_path: Path) -> None:
    config = ("name: isolated\ndependencies: [git]\nworkspace: {mode: volume}\n"
              "mounts: [{source: ., target: /workspace, exclude: [node_modules]}]\n")
    workspace = write_workspace(tmp_path / "ws", config, {"agent.sh": AGENT})
    (workspace / "src").mkdir()
    (workspace / "src" / "app.py").write_text("host's version\n")
    (workspace / "node_modules").mkdir()
    (workspace / "node_modules" / "dep.js").write_text("host only\n")
    _git(workspace, "init", "-q", "-b", "main")
    _git(workspace, "add", "moat.yaml", "agent.sh", "src")
    _git(workspace, "commit", "-qm", "host's commit")
    share(workspace)
    before = _digest(workspace)
    result = run_moat(["run", "--runtime", "docker", str(workspace), "--", "sh", "agent.sh"])
    assert result.code == 0, result.output
    assert "copied the workspace into volume moat-ws-" in result.stderr
    assert _digest(workspace) == before  # the host's tree: not a byte changed
    run_id = runs(moat_home)[0]["id"]
    volume = f"moat-ws-{run_id}"
    try:
        refused = run_moat(["destroy", run_id])
        assert refused.code == 2 and "never extracted" in refused.stderr
        assert run_moat(["snapshot", "restore", run_id, "-f"]).code == 2  # never in place
        taken = run_moat(["snapshot", run_id])
        assert taken.code == 0, taken.output
        assert run_moat(["destroy", run_id]).code == 2  # a snapshot goes with the record: not enough
        out = tmp_path / "extracted"
        restored = run_moat(["snapshot", "restore", run_id, "--to", str(out)])
        assert restored.code == 0, restored.output
        sums = dict(reversed(line.split("  ")) for line in (out / "sums.txt").read_text().splitlines())
        for name, digest in sums.items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest  # what the agent wrote
        assert _git(out, "log", "-1", "--format=%s") == "agent's commit"  # .git came whole
        assert not (out / "node_modules").exists()
        # The commit comes home through git, as the Go tool's guide says.
        _git(workspace, "fetch", "-q", str(out), "main")
        assert _git(workspace, "log", "-1", "--format=%s", "FETCH_HEAD") == "agent's commit"
        destroyed = run_moat(["destroy", run_id])  # extracted: no -f needed
        assert destroyed.code == 0, destroyed.output
    finally:
        run_moat(["destroy", "-f", run_id])
    assert volume not in {v["Name"] for v in engine.api.volumes().get("Volumes") or []}  # type: ignore[attr-defined]
