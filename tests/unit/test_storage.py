"""moat.yaml's mounts and volumes and --mount, in the plan: where each source is, what replaces the
workspace's mount, what an excluded path is, where a volume is kept, and every refusal, located."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moat.config.load import parse_config
from moat.constants import WORKSPACE_MOUNT
from moat.errors import ConfigError, EngineError, UsageError
from moat.plan.build import RunRequest, build_plan
from moat.plan.containers import Mount
from moat.plan.identity import Identity
from moat.plan.storage import parse_cli_mount
from moat.run.pod import make_excluded, reachable_parents
from moat.runtime.docker import _sdk_mounts, _tmpfs
from moat.runtime.sandbox.launch import Bind, mount_point_possible
from tests.unit.support import CATALOG, only_problem


def _plan(workspace: Path, text: str, *, runtime: str = "docker", mounts: tuple[str, ...] = (),
          home: Path | None = None, proxy_ca: Path | None = None):  # type: ignore[no-untyped-def]
    config = parse_config(text, CATALOG, file=workspace / "moat.yaml")
    request = RunRequest(workspace=workspace, command=("true",), runtime=runtime, identity=Identity(1000, 1000),
                         home=home or workspace / "home", host_env={"HOME": str(workspace / "me")},
                         mounts=tuple(parse_cli_mount(m) for m in mounts), proxy_ca=proxy_ca)
    return build_plan(config, request, CATALOG)


def _user_mounts(plan) -> list[Mount]:  # type: ignore[no-untyped-def]
    return [m for m in plan.agent.mounts if not m.target.startswith(("/etc/",))]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "me" / "notes").mkdir(parents=True)
    return ws


def test_mounts_resolve_from_the_workspace_and_keep_their_mode(workspace: Path) -> None:
    plan = _plan(workspace, "mounts:\n  - ./data:/data:ro\n  - ../ws/data:/again\n  - ~/notes:/notes:rw\n")
    mounts = _user_mounts(plan)
    assert mounts[0] == Mount(str(workspace), WORKSPACE_MOUNT)
    assert mounts[1:] == [Mount(str(workspace / "data"), "/data", True), Mount(str(workspace / "data"), "/again"),
                          Mount(str(workspace / "me" / "notes"), "/notes")]


def test_a_mount_at_the_workspace_replaces_its_mount_and_hides_what_it_excludes(workspace: Path) -> None:
    plan = _plan(workspace, "mounts:\n  - ./data:/data\n  - source: .\n    target: /workspace/\n"
                            "    exclude: [node_modules, ./build/out/]\n")
    mounts = _user_mounts(plan)
    assert [m.target for m in mounts].count(WORKSPACE_MOUNT) == 1
    assert mounts[0] == Mount(str(workspace), WORKSPACE_MOUNT, excluded=("node_modules", "build/out"),
                              owner=(1000, 1000))
    # Docker: a tmpfs per excluded path, the agent's and executable; the bind itself unchanged.
    tmpfs = _tmpfs(plan.agent)
    assert tmpfs["/workspace/node_modules"] == "rw,exec,nosuid,nodev,mode=0755,uid=1000,gid=1000"
    assert "/workspace/build/out" in tmpfs
    assert [m["Target"] for m in _sdk_mounts(plan.agent)].count("/workspace") == 1
    # The sandbox: the bind, then a tmpfs over each excluded path.
    assert Bind(str(workspace), "/workspace", False, mounts[0].excluded).argv() == [
        "--bind", str(workspace), "/workspace", "--tmpfs", "/workspace/node_modules",
        "--tmpfs", "/workspace/build/out"]


def test_cli_mounts_add_to_moat_yamls_and_a_clash_is_refused(workspace: Path) -> None:
    plan = _plan(workspace, "mounts: [./data:/data]\n", mounts=("./data:/cli:ro",))
    assert Mount(str(workspace / "data"), "/cli", True) in plan.agent.mounts
    with pytest.raises(UsageError, match=r"--mount ./me:/data: /data is already the target of moat.yaml's mounts\[0\]"):
        _plan(workspace, "mounts: [./data:/data]\n", mounts=("./me:/data",))
    with pytest.raises(UsageError, match="--mount 'nothing'"):
        parse_cli_mount("nothing")
    with pytest.raises(UsageError, match="absolute path"):
        parse_cli_mount("./data:relative")
    with pytest.raises(UsageError, match="system directory"):
        parse_cli_mount("./data:/proc/x")


def test_a_missing_source_is_located_in_moat_yaml_or_named_on_the_command_line(workspace: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _plan(workspace, "name: x\nmounts:\n  - ./data:/data\n  - source: ./gone\n    target: /gone\n")
    (problem,) = info.value.problems
    assert problem.dotted == "mounts[1].source" and problem.line == 4
    assert f"{workspace / 'gone'} does not exist" in problem.message
    with pytest.raises(UsageError, match="--mount /nope/x:/x: the mount's source /nope/x does not exist"):
        _plan(workspace, "", mounts=("/nope/x:/x",))


def test_an_excluded_path_must_be_a_directory_and_never_a_link(workspace: Path) -> None:
    (workspace / "file").write_text("x")
    os.symlink("/etc", workspace / "link")
    for excluded, words in (("file", "is a file"), ("link", "is a link"), ("node_*", "a pattern")):
        with pytest.raises(ConfigError) as info:
            _plan(workspace, f"mounts:\n  - source: .\n    target: /workspace\n    exclude: [{excluded}]\n")
        assert info.value.problems[0].dotted == "mounts[0].exclude[0]"
        assert words in info.value.problems[0].message
    with pytest.raises(ConfigError, match="only a directory's contents"):
        _plan(workspace, "mounts:\n  - source: ./file\n    target: /f\n    exclude: [x]\n")


@pytest.mark.parametrize(("text", "where", "words"), [
    ("mounts: [{source: ., target: /w, exclude: ['a;b']}]\n", "mounts[0].exclude[0]", "unsupported character ';'"),
    ("mounts: [{source: ., target: /w, exclude: [../up]}]\n", "mounts[0].exclude[0]", "must not contain '..'"),
    ("mounts: [{source: ., target: /w, exclude: [/abs]}]\n", "mounts[0].exclude[0]", "must be relative"),
    ("mounts: [{source: ., target: /w, exclude: [./]}]\n", "mounts[0].exclude[0]", "the mount itself"),
    ("mounts: [{source: ., target: /w, exclude: [a, a/b]}]\n", "mounts[0].exclude[1]", "overlaps 'a'"),
    ("mounts: [{source: ., target: /w, exclude: [a, ./a]}]\n", "mounts[0].exclude[1]", "overlaps 'a'"),
    ("mounts: ['./a:/x', './b:/x/']\n", "mounts[1].target", "already the target of mounts[0].target"),
    ("mounts: ['./a:/']\n", "mounts[0]", "system directory"),
    ("mounts: ['./a:/usr']\n", "mounts[0]", "system directory"),
    ("mounts: ['./a:/x:rx']\n", "mounts[0]", "one of 'ro', 'rw'"),
    ("volumes: [{name: v, target: /v}]\n", "volumes", "set name:"),
    ("name: a/b\nvolumes: [{name: v, target: /v}]\n", "name", "cannot name the volumes' directory"),
    ("name: ..\nvolumes: [{name: v, target: /v}]\n", "name", "cannot name the volumes' directory"),
    ("name: a\nvolumes: [{name: v, target: /v}, {name: v, target: /w}]\n", "volumes[1].name", "named 'v' too"),
    ("name: a\nvolumes: [{name: v, target: /v}]\nmounts: ['./x:/v']\n", "volumes[0].target", "already the target"),
    ("name: a\nvolumes: [{name: v, target: /w/nm/cache}]\nmounts: [{source: ., target: /w, exclude: [nm]}]\n",
     "mounts[0].exclude[0]", "would hide volumes[0]"),
])
def test_bad_mounts_and_volumes_are_located(text: str, where: str, words: str) -> None:
    dotted, message, line, _ = only_problem(text)
    assert dotted == where
    assert words in message
    assert line is not None


def test_volumes_are_kept_per_run_name_under_moat_home_or_as_docker_volumes(workspace: Path) -> None:
    home = workspace / "moat-home"
    plan = _plan(workspace, "name: agent-1\nvolumes:\n  - name: state\n    target: /home/moatuser/.state\n"
                            "  - {name: deps, target: /cache, type: volume, readonly: true}\n", home=home)
    state, deps = [m for m in plan.agent.mounts if m.target in ("/home/moatuser/.state", "/cache")]
    assert state == Mount(str(home / "volumes" / "agent-1" / "state"), "/home/moatuser/.state", create=True,
                          owner=(1000, 1000), reach_from=str(home))
    assert deps == Mount("moat_agent-1_deps", "/cache", True, owner=(1000, 1000), volume="agent-1/deps")
    assert _sdk_mounts(plan.agent)[-1]["Type"] == "volume" or any(
        m["Type"] == "volume" and m["Source"] == "moat_agent-1_deps" for m in _sdk_mounts(plan.agent))
    # The run's name (-n) does not move them: they belong to moat.yaml's name.
    with pytest.raises(ConfigError) as info:
        _plan(workspace, "name: a\nvolumes: [{name: v, target: /v, type: volume}]\n", runtime="sandbox")
    assert info.value.problems[0].dotted == "volumes[0].type"
    assert "sandbox runtime has no engine" in info.value.problems[0].message


def test_a_users_mount_cannot_cover_moats_own(workspace: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _plan(workspace, "name: x\nmounts: ['./data:/etc/moat']\n")
    (problem,) = info.value.problems
    assert problem.dotted == "mounts[0].target" and problem.line == 2
    assert "would cover /etc/moat/moat-context.md" in problem.message
    with pytest.raises(UsageError, match=r"would cover /etc/moat/moat-context\.md"):
        _plan(workspace, "", mounts=("./data:/etc/moat",))


def test_an_excluded_directory_is_made_as_the_sources_owner_one_level_at_a_time(tmp_path: Path) -> None:
    make_excluded(tmp_path, "a/b")
    assert (tmp_path / "a" / "b").is_dir()
    make_excluded(tmp_path, "a/b")  # there already: fine
    (tmp_path / "f").write_text("x")
    with pytest.raises(EngineError, match="is not a directory"):
        make_excluded(tmp_path, "f/x")
    os.symlink(tmp_path / "a", tmp_path / "link")
    with pytest.raises(EngineError, match="is not a directory"):
        make_excluded(tmp_path, "link/b")  # a link put there since the plan: never followed


def test_a_volumes_parents_are_searchable_and_not_listable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reachable_parents(home, home / "volumes" / "agent")
    assert (home / "volumes").stat().st_mode & 0o777 == 0o711
    assert (home / "volumes" / "agent").stat().st_mode & 0o777 == 0o711


def test_the_sandbox_mounts_only_where_a_mount_point_can_be(tmp_path: Path) -> None:
    assert mount_point_possible("/data", "/tmp")  # a new top-level directory
    assert mount_point_possible("/workspace/x", "/tmp")
    assert mount_point_possible("/tmp/x/y", "/tmp")
    assert mount_point_possible("/usr/bin", "/tmp")  # exists on the host: bound over
    assert not mount_point_possible("/usr/no-such-dir-here", "/tmp")


# --- moat volumes -------------------------------------------------------------------------------


def _volumes_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from moat.cli.main import main

    code = main(["volumes", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two run names' volume directories under the test's MOAT_HOME, and no engine."""
    import moat.cli.volumes as cli
    from moat.run.store import moat_home

    monkeypatch.setattr(cli, "_engine_volumes", lambda home, required: ([], None))
    home = moat_home()
    for scope, volume in (("agent", "state"), ("agent", "cache"), ("other", "state")):
        (home / "volumes" / scope / volume).mkdir(parents=True)
    (home / "volumes" / "agent" / "state" / "f").write_text("12345")
    return home


def test_volumes_ls_lists_each_run_names_volumes(capsys: pytest.CaptureFixture[str], kept: Path) -> None:
    import json

    code, out, _ = _volumes_cli(capsys, "ls", "--json")
    assert code == 0
    listed = {(v["run_name"], v["volume"], v["type"], v["size_bytes"]) for v in json.loads(out)}
    assert listed == {("agent", "state", "bind", 5), ("agent", "cache", "bind", 0), ("other", "state", "bind", 0)}
    code, out, _ = _volumes_cli(capsys, "ls")
    assert out.splitlines()[0].split() == ["RUN", "NAME", "VOLUME", "TYPE", "SIZE", "LOCATION"]


def test_volumes_rm_removes_one_run_names_and_asks_first(capsys: pytest.CaptureFixture[str], kept: Path) -> None:
    code, _, err = _volumes_cli(capsys, "rm", "agent")  # no terminal to confirm on: nothing removed
    assert code == 2 and "add -f" in err
    assert (kept / "volumes" / "agent" / "state" / "f").exists()
    code, _, err = _volumes_cli(capsys, "rm", "agent", "nope", "-f")
    assert code == 2 and "keeps no volume nope" in err
    code, out, _ = _volumes_cli(capsys, "rm", "agent", "cache", "-f")
    assert code == 0 and "removed agent/cache" in out
    assert not (kept / "volumes" / "agent" / "cache").exists() and (kept / "volumes" / "agent" / "state").exists()
    code, out, _ = _volumes_cli(capsys, "rm", "-f", "agent")
    assert not (kept / "volumes" / "agent").exists()  # its last volume gone, its directory too
    assert (kept / "volumes" / "other" / "state").exists()
    code, out, _ = _volumes_cli(capsys, "rm", "-f", "agent")
    assert code == 0 and "No volumes are kept for 'agent'" in out


def test_volumes_prune_keeps_an_active_runs(capsys: pytest.CaptureFixture[str], kept: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import moat.cli.volumes as cli

    monkeypatch.setattr(cli, "_active_names", lambda: {"other"})
    code, _, err = _volumes_cli(capsys, "prune", "-f")
    assert code == 0
    assert "kept 1 volume(s) of active runs (other)" in err
    assert not (kept / "volumes" / "agent").exists()
    assert (kept / "volumes" / "other" / "state").exists()


# --- workspace.mode: volume ---------------------------------------------------------------------


def test_a_volume_workspace_is_a_volume_of_the_runs_own_without_the_excludes(workspace: Path) -> None:
    from moat.plan.model import WorkspaceCopy

    (workspace / ".git").mkdir()
    text = ("workspace: {mode: volume}\n"
            "mounts: [{source: ., target: /workspace, exclude: [node_modules, 'dist/*.map']}]\n")
    plan = _plan(workspace, text)
    copy = plan.workspace_copy
    assert copy == WorkspaceCopy(f"moat-ws-{plan.run_id}", str(workspace), ("node_modules", "dist/*.map"))
    first = plan.agent.mounts[0]
    assert first == Mount(copy.volume, WORKSPACE_MOUNT, workspace_copy=True)
    assert not any(m.source == str(workspace) for m in plan.agent.mounts)  # the host's tree is not there
    assert plan.snapshots is not None and not plan.snapshots.pre_run  # nothing to snapshot before: the host
    assert plan.to_dict()["workspace_mode"] == "volume"
    assert _sdk_mounts(plan.agent)[0]["Type"] == "volume"
    # --workspace-mode over moat.yaml's, both ways.
    from moat.config.load import parse_config as parse

    config = parse(text.replace(", 'dist/*.map'", ""), CATALOG, file=workspace / "moat.yaml")
    bound = build_plan(config, RunRequest(workspace=workspace, command=("true",), runtime="docker",
                                          workspace_mode="bind", home=workspace / "home"), CATALOG)
    assert bound.workspace_copy is None
    assert bound.agent.mounts[0].excluded == ("node_modules",)
    with pytest.raises(ConfigError, match="a pattern cannot be hidden"):  # bound, a pattern is no directory
        build_plan(parse(text, CATALOG, file=workspace / "moat.yaml"),
                   RunRequest(workspace=workspace, command=("true",), runtime="docker", workspace_mode="bind",
                              home=workspace / "home"), CATALOG)


@pytest.mark.parametrize(("text", "runtime", "words"), [
    ("workspace: {mode: volume}\n", "sandbox", "sandbox runtime has none"),
    ("workspace: {mode: volume}\nmounts: [{source: ., target: /workspace, exclude: [.git/objects]}]\n", "docker",
     "would leave .git out"),
    ("workspace: {mode: volume}\nmounts: [{source: ., target: /workspace, exclude: ['*']}]\n", "docker",
     "would leave .git out"),
])
def test_what_a_volume_workspace_cannot_be(workspace: Path, text: str, runtime: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _plan(workspace, text, runtime=runtime)
    assert words in info.value.problems[0].message
    assert info.value.problems[0].line is not None


def test_a_worktree_cannot_be_a_volume_workspace(workspace: Path) -> None:
    (workspace / ".git").write_text("gitdir: /elsewhere/.git/worktrees/x\n")
    with pytest.raises(ConfigError, match="worktree or submodule"):
        _plan(workspace, "workspace: {mode: volume}\n")


def test_the_copy_takes_git_whole_and_leaves_the_excludes_out(workspace: Path, tmp_path: Path) -> None:
    import tarfile

    from moat.plan.model import WorkspaceCopy
    from moat.run.snapshots import copy_archive

    for name in (".git/objects/ab/cd", ".git/HEAD", "node_modules/x/y.js", "dist/a.map", "dist/a.js", "src/m.py"):
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(name)
    (workspace / ".gitignore").write_text("dist/\n")  # not a copy's business: the agent gets dist/
    copy = WorkspaceCopy("v", str(workspace), ("node_modules", "dist/*.map"))
    with copy_archive(copy, Identity(1234, 5678), tmp_path / "scratch") as (archive, count), \
            tarfile.open(fileobj=archive, mode="r|") as tar:
        members = {m.name: m for m in tar}
    assert {".git/objects/ab/cd", ".git/HEAD", "dist/a.js", "src/m.py", ".gitignore"} <= set(members)
    assert not any(n.startswith("node_modules") or n == "dist/a.map" for n in members)
    assert count == len(members)
    assert {(m.uid, m.gid) for m in members.values()} == {(1234, 5678)}
    assert not list((tmp_path / "scratch").iterdir())  # the archive is gone afterwards


# --- review fixes --------------------------------------------------------------------------------


def test_a_link_in_the_workspace_cannot_carry_a_mount_out_of_it(workspace: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (workspace / "data").rmdir()
    (workspace / "data").symlink_to(secret)  # what an agent could leave for the next run
    with pytest.raises(ConfigError, match="leads out of the workspace"):
        _plan(workspace, "mounts: [./data:/data]\n")
    plan = _plan(workspace, f"mounts: ['{secret}:/data', '../secret:/again']\n")  # named as such: fine
    assert Mount(str(secret), "/data") in plan.agent.mounts


def test_under_strict_no_mount_is_a_way_out(workspace: Path, tmp_path: Path) -> None:
    import socket as sockets

    path = tmp_path / "s.sock"
    with sockets.socket(sockets.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(UsageError, match="a Unix socket"):
            _plan(workspace, f"network: {{policy: strict}}\nmounts: ['{path}:/s.sock']\n",
                  runtime="docker", proxy_ca=Path("/nonexistent/ca.crt"))
    assert _plan(workspace, f"mounts: ['{tmp_path}:/t']\n").agent.mounts  # permissive: as the user says


def test_a_volume_cannot_be_the_workspace() -> None:
    where, message, _, _ = only_problem("name: a\nvolumes: [{name: v, target: /workspace}]\n")
    assert where == "volumes[0].target" and "cannot replace it" in message


def test_snapshots_follow_the_tree_at_workspace(workspace: Path) -> None:
    from moat.run.execution import snapshot_source

    assert snapshot_source(_plan(workspace, "")) == workspace
    assert snapshot_source(_plan(workspace, "mounts: [{source: ./data, target: /workspace}]\n")) == workspace / "data"


def test_under_strict_a_directory_holding_a_socket_is_no_mount(workspace: Path, tmp_path: Path) -> None:
    import socket as sockets

    run_user = tmp_path / "run-user"
    (run_user / "podman").mkdir(parents=True)
    with sockets.socket(sockets.AF_UNIX) as server:
        server.bind(str(run_user / "podman" / "podman.sock"))  # a rootless engine's, say
        with pytest.raises(UsageError, match=r"podman\.sock"):
            _plan(workspace, f"network: {{policy: strict}}\nmounts: ['{run_user}:/r']\n",
                  runtime="docker", proxy_ca=Path("/nonexistent/ca.crt"))


def test_a_link_out_through_another_name_of_the_workspace(workspace: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (workspace / "data").rmdir()
    (workspace / "data").symlink_to(secret)
    alias = tmp_path / "alias"
    alias.symlink_to(workspace)
    with pytest.raises(UsageError, match="leads out of the workspace"):
        _plan(workspace, "", mounts=(f"{alias}/data:/data",))


def test_a_read_only_directory_of_a_snapshot_restores(tmp_path: Path) -> None:
    from moat.run.snapshots import MANUAL, Selection, Snapshots

    ws = tmp_path / "ws"
    (ws / "ro").mkdir(parents=True)
    (ws / "ro" / "f").write_text("f\n")
    (ws / "ro").chmod(0o555)
    try:
        store = Snapshots(tmp_path / "snapshots")
        snap = store.create(ws, MANUAL, Selection())
        store.restore_to(snap, tmp_path / "out")
        assert (tmp_path / "out" / "ro" / "f").read_text() == "f\n"
        assert (tmp_path / "out" / "ro").stat().st_mode & 0o777 == 0o755  # the owner's to write, as restored
    finally:
        (ws / "ro").chmod(0o755)
