"""Mounts and volumes for real: an agent writes through a mount and into a volume, a second run sees
the volume's data, an excluded path is hidden (and the agent's own, in memory), a read-only mount
refuses writes, `moat volumes` lists and removes what the runs kept. Docker and the sandbox."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import WORKSPACE_UID, run_moat, share, write_workspace

AGENT_UID = WORKSPACE_UID if os.getuid() == 0 else os.getuid()

CONFIG = """\
name: {name}
mounts:
  - ./shared:/shared
  - ../outside:/data:ro
  - source: .
    target: /workspace
    exclude: [node_modules, build/out]
volumes:
  - name: state
    target: /home/moatuser/.state
{extra}"""

# What the agent does: it writes through the mount, into the volume (twice over two runs), tries the
# read-only mount, writes into the excluded paths (and runs a program there), and reports what it sees.
SCRIPT = """
set -u
echo "from-agent" > /workspace/shared/written
echo "run" >> "$STATE/count"; echo "count=$(wc -l < "$STATE/count")"
if echo x > /data/nope 2>/dev/null; then echo "ro=writable"; else echo "ro=refused"; fi
echo "data=$(cat /data/input)"
echo "hidden=$(ls -A /workspace/node_modules | tr '\\n' ' ')"
printf '#!/bin/sh\\necho exec-ok\\n' > /workspace/node_modules/tool && chmod +x /workspace/node_modules/tool
/workspace/node_modules/tool
echo agent-only > /workspace/build/out/artifact
echo "owner=$(stat -c %u /workspace/node_modules)"
"""


def _workspace(tmp_path: Path, name: str, extra: str = "") -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "input").write_text("host-data\n")
    workspace = write_workspace(tmp_path / "ws", CONFIG.format(name=name, extra=extra),
                                {"script.sh": SCRIPT})
    (workspace / "shared").mkdir()
    (workspace / "node_modules").mkdir()
    (workspace / "node_modules" / "host-only-file").write_text("the host's\n")
    share(workspace)
    share(outside)
    return workspace


def _check_first_and_second_run(workspace: Path, args: list[str], state_env: str) -> None:
    command = [*args, str(workspace), "--", "sh", "-c", f"STATE={state_env} sh /workspace/script.sh"]
    first = run_moat(command)
    assert first.code == 0, first.output
    out = first.stdout
    assert "count=1" in out and "ro=refused" in out and "data=host-data" in out and "exec-ok" in out
    assert "hidden= \n" in out or "hidden=\n" in out  # the host's node_modules is not shown
    assert f"owner={AGENT_UID}" in out  # the excluded path is the agent's to write
    assert (workspace / "shared" / "written").read_text() == "from-agent\n"  # through the mount
    assert sorted(p.name for p in (workspace / "node_modules").iterdir()) == ["host-only-file"]  # untouched
    assert (workspace / "build" / "out").is_dir() and not any((workspace / "build" / "out").iterdir())
    assert (workspace / "build" / "out").stat().st_uid == AGENT_UID  # made as the workspace's owner
    assert not (workspace.parent / "outside" / "nope").exists()
    second = run_moat(command)
    assert second.code == 0, second.output
    assert "count=2" in second.stdout  # the volume kept the first run's data


@pytest.mark.engine
def test_mounts_and_volumes_on_docker(engine: object, moat_home: Path, tmp_path: Path) -> None:
    name = f"e2e-storage-{uuid.uuid4().hex[:8]}"
    extra = "  - name: deps\n    target: /deps\n    type: volume\n"
    workspace = _workspace(tmp_path, name, extra)
    try:
        _check_first_and_second_run(workspace, ["run", "--runtime", "docker"], "/home/moatuser/.state")
        # The Docker volume: the agent's to write, kept across runs.
        for expected in ("1", "2"):
            result = run_moat(["run", "--runtime", "docker", str(workspace), "--", "sh", "-c",
                               "echo x >> /deps/f && wc -l < /deps/f && stat -c %u /deps"])
            assert result.code == 0, result.output
            assert result.stdout.split() == [expected, str(AGENT_UID)]
        state = moat_home / "volumes" / name / "state"
        assert (state / "count").read_text() == "run\nrun\n"
        listed = run_moat(["volumes", "ls", "--json"])
        assert listed.code == 0, listed.output
        kept = {(v["run_name"], v["volume"], v["type"]) for v in json.loads(listed.stdout)}
        assert kept == {(name, "state", "bind"), (name, "deps", "volume")}
    finally:
        removed = run_moat(["volumes", "rm", "-f", name])
    assert removed.code == 0, removed.output
    assert "removed" in removed.stdout and not state.exists()
    assert json.loads(run_moat(["volumes", "ls", "--json"]).stdout) == []


@pytest.mark.sandbox
def test_mounts_and_volumes_in_the_sandbox(sandbox: object, moat_home: Path, tmp_path: Path) -> None:
    moat_home.mkdir(parents=True, exist_ok=True)
    share(moat_home)  # the agent's user binds its volume itself: MOAT_HOME must be reachable
    name = f"e2e-storage-{uuid.uuid4().hex[:8]}"
    workspace = _workspace(tmp_path, name)
    # The image's home (/home/moatuser) is the sandbox agent's own ($HOME).
    _check_first_and_second_run(workspace, ["run", "--runtime", "sandbox"], '"$HOME/.state"')
    refused = run_moat(["run", "--runtime", "sandbox", "--mount", "./shared:/usr/no-such-moat-dir", str(workspace),
                        "--", "true"])
    assert refused.code != 0 and "nothing can be mounted there" in refused.stderr
    assert "Traceback" not in refused.stderr
    removed = run_moat(["volumes", "prune", "-f"])
    assert removed.code == 0, removed.output
    assert not (moat_home / "volumes" / name).exists()
