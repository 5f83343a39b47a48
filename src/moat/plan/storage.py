"""The agent's storage beyond its image: the workspace, moat.yaml's ``mounts`` and ``--mount``, and its
``volumes``.

- The workspace is bound at /workspace unless a mount targets /workspace: that one replaces it (and
  may hide parts of it with ``exclude``), as in the Go tool.
- A mount's source is the host's: relative to the workspace, ``~`` for the caller's home; it must
  exist. An excluded path is an empty in-memory directory laid over the mount; it must be a
  directory or missing (moat makes it, as the source's owner, before the container starts: the
  engine would make it as root), never a link.
- A volume outlives runs: kept per run name (``name:``), a directory under MOAT_HOME/volumes (type
  bind, the default) or a Docker named volume ``moat_<name>_<volume>`` (type volume, Docker only).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from moat.config.load import Config
from moat.config.problems import translate
from moat.config.schema import Mount as MountEntry
from moat.config.schema import mount_entry
from moat.config.yamldoc import Marks
from moat.constants import WORKSPACE_MOUNT
from moat.errors import ConfigError, Located, UsageError
from moat.plan.containers import Mount
from moat.plan.identity import Identity
from moat.plan.model import WorkspaceCopy

VOLUMES_DIR = "volumes"


def volume_dir(home: Path, scope: str, volume: str) -> Path:
    """Where a ``type: bind`` volume of the runs named ``scope`` lives (the Go tool's layout)."""
    return home / VOLUMES_DIR / scope / volume


def docker_volume_name(scope: str, volume: str) -> str:
    return f"moat_{scope}_{volume}"


class _Place:
    """Where a mount came from, for its errors: moat.yaml's mounts[i] (located) or a --mount."""

    def __init__(self, config: Config, index: int | None, text: str = "") -> None:
        self.config, self.index, self.text = config, index, text

    def fail(self, message: str, key: str | int = "source", hint: str | None = None) -> Exception:
        if self.index is None:
            return UsageError(f"--mount {self.text}: {message}", hint=hint)
        where: tuple[str | int, ...] = ("mounts", self.index, key) if isinstance(key, str) else (
            "mounts", self.index, "exclude", key)
        line, column = self.config.marks.locate(where, prefer_key=False)
        return ConfigError(self.config.file, [Located(where, message, line, column)], hint=hint)


def workspace_copy(config: Config, workspace: Path, volume: str, from_cli: bool, engine_volumes: bool,
                   runtime: str) -> WorkspaceCopy:
    """workspace.mode: volume: the tree copied into a volume of the run's own, without what the
    /workspace mount's ``exclude`` names (patterns allowed: ``*`` ``dist/*.map``), never without
    ``.git`` (a partial repository is a broken one); a worktree or a submodule (``.git`` a file naming
    a directory elsewhere) cannot be copied whole, and is refused."""
    where = ("workspace", "mode")

    def refuse(message: str, hint: str | None = None) -> Exception:
        if from_cli or config.file is None:
            return UsageError(f"--workspace-mode volume: {message}", hint=hint)
        return ConfigError(config.file, [Located(where, message, *config.marks.locate(where, prefer_key=False))],
                           hint=hint)

    if not engine_volumes:
        raise refuse(f"a volume workspace is a Docker volume, and the {runtime} runtime has none",
                     hint="Use --runtime docker, or workspace.mode: bind.")
    dot_git = workspace / ".git"
    if dot_git.is_symlink() or (dot_git.exists() and not dot_git.is_dir()):
        raise refuse(f"{workspace} is a git worktree or submodule (.git is a file): its repository is elsewhere"
                     " and would not be copied", hint="Run from the main checkout, or use workspace.mode: bind.")
    excluded: list[str] = []
    for index, entry in enumerate(config.model.mounts):
        if entry.target != WORKSPACE_MOUNT:
            continue
        for position, pattern in enumerate(entry.exclude):
            first = pattern.split("/", 1)[0]
            if fnmatch.fnmatchcase(".git", first):
                place = ("mounts", index, "exclude", position)
                message = (f"'{pattern}' would leave .git out of the volume workspace's copy, and a partial .git"
                           " is a broken repository")
                raise ConfigError(config.file, [Located(place, message, *config.marks.locate(place))])
            excluded.append(pattern)
    return WorkspaceCopy(volume, str(workspace), tuple(excluded))


def agent_mounts(config: Config, workspace: Path, home: Path, host_env: Mapping[str, str],
                 extra: Sequence[tuple[str, MountEntry]], identity: Identity, engine_volumes: bool,
                 runtime: str, copy: WorkspaceCopy | None = None) -> tuple[Mount, ...]:
    """The workspace's mount (or the one that replaces it) first, then the others, then the volumes.
    ``extra`` are the command line's ``--mount`` (as written, parsed). With ``copy`` (a volume
    workspace) /workspace is that volume, and a mount at /workspace only says what is not copied."""
    model = config.model
    entries = [(_Place(config, index), entry) for index, entry in enumerate(model.mounts)
               if copy is None or entry.target != WORKSPACE_MOUNT]
    taken = {entry.target: f"moat.yaml's mounts[{index}]" for index, entry in enumerate(model.mounts)}
    taken.update({volume.target: f"moat.yaml's volumes[{index}]" for index, volume in enumerate(model.volumes)})
    for text, entry in extra:
        if entry.target in taken:
            raise UsageError(f"--mount {text}: {entry.target} is already the target of {taken[entry.target]};"
                             " each path in the container gets one mount")
        taken[entry.target] = f"--mount {text}"
        entries.append((_Place(config, None, text), entry))
    mounts = [_bound(place, entry, workspace, host_env, identity) for place, entry in entries]
    if copy is not None:
        if any(m.target == WORKSPACE_MOUNT for m in mounts):
            raise UsageError("--mount …:/workspace cannot replace a volume workspace's /workspace",
                             hint="Leave it out, or use --workspace-mode bind.")
        mounts.insert(0, Mount(copy.volume, WORKSPACE_MOUNT, workspace_copy=True))
    elif WORKSPACE_MOUNT not in taken:
        mounts.insert(0, Mount(str(workspace), WORKSPACE_MOUNT))
    else:
        mounts.sort(key=lambda m: m.target != WORKSPACE_MOUNT)
    mounts += _worktree_git(workspace, mounts)
    for index, volume in enumerate(model.volumes):
        assert model.name is not None  # config.checks: volumes need a run name
        if volume.type == "volume":
            if not engine_volumes:
                where = ("volumes", index, "type")
                raise ConfigError(config.file, [Located(
                    where, f"type: volume is a Docker named volume, and the {runtime} runtime has no engine to keep"
                           " one; use type: bind (a directory under MOAT_HOME/volumes), or --runtime docker",
                    *config.marks.locate(where, prefer_key=False))])
            mounts.append(Mount(docker_volume_name(model.name, volume.name), volume.target, volume.readonly,
                                owner=(identity.uid, identity.gid), volume=f"{model.name}/{volume.name}"))
        else:
            mounts.append(Mount(str(volume_dir(home, model.name, volume.name)), volume.target, volume.readonly,
                                create=True, owner=(identity.uid, identity.gid), reach_from=str(home)))
    return tuple(mounts)


def _bound(place: _Place, entry: MountEntry, workspace: Path, host_env: Mapping[str, str],
           identity: Identity) -> Mount:
    source = entry.source
    if source == "~" or source.startswith("~/"):
        home = host_env.get("HOME", "")
        if not home:
            raise place.fail(f"{source} starts with ~, and HOME is not set")
        source = home + source[1:]
    path = Path(posixpath.normpath(os.path.join(workspace, source)))  # an absolute source stays itself
    real_workspace = os.path.realpath(workspace)
    written_inside = path.is_relative_to(workspace) or Path(os.path.realpath(path.parent)).is_relative_to(
        real_workspace)  # through another name of the workspace too
    if written_inside and not Path(os.path.realpath(path)).is_relative_to(real_workspace):
        # The workspace is the agent's to change: a link it left there must not reach the host's files.
        raise place.fail(f"{path} leads out of the workspace (to {os.path.realpath(path)}) through a link",
                         hint="Name the directory itself (an absolute path, or ../), or remove the link.")
    if not os.path.lexists(path):
        raise place.fail(f"the mount's source {path} does not exist",
                         hint="Create it, or correct the path (relative paths start at the workspace).")
    if not path.exists():
        raise place.fail(f"the mount's source {path} is a link to nothing")
    if entry.exclude and not path.is_dir():
        raise place.fail(f"{path} is a file; only a directory's contents can be excluded")
    for position, excluded in enumerate(entry.exclude):
        hidden = path / excluded
        if "*" in excluded:
            raise place.fail(f"'{excluded}': a pattern cannot be hidden, name the directory (e.g. node_modules)",
                             position)
        if hidden.is_symlink():
            raise place.fail(f"{hidden} is a link; exclude the directory it points to, inside the mount",
                             position)
        if hidden.exists() and not hidden.is_dir():
            raise place.fail(f"{hidden} is a file; only directories can be excluded", position)
    # The owner: the agent's user, whose the excluded paths' in-memory directories are.
    return Mount(str(path), entry.target, entry.read_only, excluded=tuple(entry.exclude),
                 owner=(identity.uid, identity.gid) if entry.exclude else None)


def parse_cli_mount(text: str) -> tuple[str, MountEntry]:
    """``--mount SOURCE:TARGET[:ro|rw]``, checked as moat.yaml's string form is."""
    try:
        data = mount_entry(text)
        return text, MountEntry.model_validate(data)
    except ValueError as exc:
        if isinstance(exc, ValidationError):  # phrased as moat.yaml's problems are
            message = "; ".join(f"{p.dotted}: {p.message}" if p.path else p.message
                                for p in translate(exc.errors(), data, Marks(), MountEntry))
        else:
            message = str(exc)
        raise UsageError(f"--mount {text!r}: {message}",
                         hint="Write --mount SOURCE:TARGET or SOURCE:TARGET:ro (TARGET absolute).") from None


def check_overlaps(mounts: Sequence[Mount], own: Sequence[Mount], config: Config | None = None) -> None:
    """A user's mount where moat puts its own (its CA, a grant's files, the agent's sessions) would
    replace moat's, or be replaced: refused, naming both (located when moat.yaml asked for it)."""
    mine = {m.target for m in own}
    for mount in mounts:
        if mount in own:
            continue
        for other in mine:
            if (mount.target == other or other.startswith(mount.target.rstrip("/") + "/")
                    or mount.target.startswith(other.rstrip("/") + "/")):
                message = (f"a mount at {mount.target} would cover {other}, where moat puts the agent's own files"
                           " (its CA, a grant's files, its sessions)")
                hint = "Mount it somewhere else (e.g. under /data)."
                where = _declared_at(config, mount.target) if config is not None else None
                if where is None or config is None:
                    raise UsageError(message, hint=hint)
                raise ConfigError(config.file, [Located(where, message, *config.marks.locate(where))], hint=hint)


def _declared_at(config: Config, target: str) -> tuple[str | int, ...] | None:
    """Where moat.yaml asks for a mount or volume at ``target`` (None: the command line did)."""
    for index, entry in enumerate(config.model.mounts):
        if entry.target == target:
            return ("mounts", index, "target")
    for index, volume in enumerate(config.model.volumes):
        if volume.target == target:
            return ("volumes", index, "target")
    return None


def _worktree_git(workspace: Path, mounts: Sequence[Mount]) -> list[Mount]:
    """A worktree's main git directory at its own path (its ``.git`` file names it so), for git to
    work in the run — read-only but for what a commit writes: ``objects``, ``refs``, ``logs`` and the
    worktree's own administrative directory (its HEAD, index and reflog), whose pointers
    (``commondir``, ``gitdir``, ``config.worktree``) stay read-only. An allowlist: anything else the
    agent could add there (a hook, a config, ``commondir``, a submodule's directory) could make git run
    a program on the host the next time you use it in the main checkout."""
    at_workspace = next((m for m in mounts if m.target == WORKSPACE_MOUNT), None)
    if at_workspace is None or at_workspace.source != str(workspace):
        return []
    found = worktree_admin(workspace)
    if found is None:
        return []
    main, own = found
    if main.is_relative_to(workspace):
        return []
    writable = [main / name for name in ("objects", "refs", "logs")]
    for path in (*writable, own):
        if path.is_symlink():
            raise UsageError(f"{path} is a link: moat cannot give a run in the worktree {workspace} just that part"
                             " of the repository", hint="Make it a directory of its own, or run in the main checkout.")
    found_mounts = [Mount(str(main), str(main), True)]
    found_mounts += [Mount(str(p), str(p)) for p in writable if p.is_dir()]
    found_mounts.append(Mount(str(own), str(own)))
    for name in ("commondir", "gitdir", "config.worktree"):
        pointer = own / name
        # A missing one is covered too (by an empty file): the agent cannot make one where git looks.
        source = str(pointer) if pointer.is_file() and not pointer.is_symlink() else os.devnull
        found_mounts.append(Mount(source, str(pointer), True))
    return found_mounts


def worktree_admin(workspace: Path) -> tuple[Path, Path] | None:
    """(the main repository's git directory, the worktree's own administrative directory in it) when
    ``workspace`` is a worktree: its ``.git`` file reads ``gitdir: <main>/worktrees/<name>``, and that
    directory's ``gitdir`` names this very ``.git`` back (an agent cannot make a ``.git`` file that
    borrows another repository: it would have to write in that repository too)."""
    dot_git = workspace / ".git"
    if dot_git.is_symlink() or not dot_git.is_file():
        return None
    try:
        line = dot_git.read_text(errors="replace").strip()
    except OSError:
        return None
    if not line.startswith("gitdir: "):
        return None
    admin = (workspace / line.removeprefix("gitdir: ")).resolve()
    main = admin.parent.parent
    if admin.parent.name != "worktrees" or not (main / "objects").is_dir():
        return None  # a submodule's, or something else: not a worktree of a repository here
    try:
        back = Path((admin / "gitdir").read_text(errors="replace").strip())
    except OSError:
        return None
    if back.resolve() != dot_git.resolve():
        return None
    return main, admin


def main_git_dir(workspace: Path) -> Path | None:
    found = worktree_admin(workspace)
    return found[0] if found is not None else None


ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")


def check_strict(mounts: Sequence[Mount], own: Sequence[Mount], engine_socket: str | None) -> None:
    """Under a strict policy no mount may be a way out: a Unix socket (the engine's above all: it
    starts containers with any network), or a directory holding the engine's."""
    sockets = {os.path.realpath(p) for p in (*ENGINE_SOCKETS, *([engine_socket] if engine_socket else []))}
    for mount in mounts:
        if mount in own or mount.volume or mount.workspace_copy:
            continue
        real = os.path.realpath(mount.source)
        try:
            is_socket = stat.S_ISSOCK(os.stat(real).st_mode)
        except OSError:
            is_socket = False
        holds = [s for s in sockets if s.startswith(real.rstrip("/") + "/") and os.path.exists(s)]
        holds += [] if is_socket or holds else _sockets_in(real)
        if is_socket or holds:
            raise UsageError(f"a mount of {mount.source} ({'a Unix socket' if is_socket else 'it holds ' + holds[0]})"
                             " would give the agent a way around network.policy: strict",
                             hint="Remove the mount, or use network.policy: permissive (docker:host is the way to"
                                  " give an agent the engine).")


def _sockets_in(directory: str, limit: int = 100_000) -> list[str]:
    """Unix sockets under ``directory`` (a D-Bus bus, a rootless engine's), looked for among its
    first ``limit`` entries, links not followed: a tree past that is refused as unknown."""
    if not os.path.isdir(directory):
        return []
    seen = 0
    for root, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            seen += 1
            if seen > limit:
                return [f"more than {limit:,} entries, not all looked through for sockets"]
            try:
                if stat.S_ISSOCK(os.lstat(os.path.join(root, name)).st_mode):
                    return [os.path.join(root, name)]
            except OSError:
                continue
    return []
