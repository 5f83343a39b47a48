"""The command lines that make the sandbox: a holder for the run's network, a container, an exec.

- The *holder* is ``bwrap`` in a new user and network namespace (only loopback), asleep.
- A *container* (a service or the agent) joins the holder's namespaces with ``nsenter`` and runs in
  its own user, pid, ipc, uts and mount namespaces (``bwrap``): the host's files read-only, its own
  /tmp, /run, /dev and /etc/hosts. Its pid namespace dies with its first process, so killing that
  one process ends everything the container ever started.
- An *exec* enters a running container's namespaces, as ``docker exec`` does.

Every process runs as the plan's identity, mapped to itself inside: never as host root. Every
``bwrap`` carries the container's tag on its command line (``--setenv MOAT_SANDBOX <tag>``).
bwrap binds only paths the identity can reach (even ``--bind-fd`` resolves the path again); a
directory it cannot reach (a cache under root's MOAT_HOME) is handed to a service as an open file
descriptor instead, used through ``/proc/self/fd/N``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from moat.plan.identity import Identity

TAG_VAR = "MOAT_SANDBOX"
# Top-level host entries the agent does not get read-only: they are replaced or private.
_NOT_SHARED = {"proc", "dev", "tmp", "run", "sys", "workspace", "lost+found"}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# A command the container lacks is said so in these words (``exec`` turns them into ProgramNotFound).
MISSING_MARK = "moat-sandbox: no such program:"
EXEC_SCRIPT = (f'command -v "$0" >/dev/null 2>&1 || {{ echo "{MISSING_MARK} $0" >&2; exit 127; }}; '
               'exec "$0" "$@"')
# The gate of an exec that must join the container's cgroup first: one line on stdin lets it go on.
GATED_EXEC_SCRIPT = "read -r _ || exit 125; exec </dev/null; " + EXEC_SCRIPT
# The agent's command: through a shell's exec, a command that does not exist exits 127, as in a container.
AGENT_SCRIPT = 'exec "$0" "$@"'


def as_identity(identity: Identity) -> dict[str, Any]:
    """``subprocess`` arguments that run a process as ``identity`` (only root can, and must, switch)."""
    if os.geteuid() != 0 or identity.uid == 0:
        return {}
    return {"user": identity.uid, "group": identity.gid, "extra_groups": []}


def reachable(path: str, identity: Identity) -> bool:
    """Whether ``identity`` (without supplementary groups) can search its way into directory ``path``."""
    if identity.uid == os.geteuid() or identity.root:
        return os.path.isdir(path)
    probe = Path("/")
    for part in [*Path(path).parts[1:], None]:
        try:
            info = probe.stat()
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            return False
        bit = (stat.S_IXUSR if info.st_uid == identity.uid else
               stat.S_IXGRP if info.st_gid == identity.gid else stat.S_IXOTH)
        if not info.st_mode & bit:
            return False
        if part is None:
            return True
        probe = probe / part
    return True


@cache
def search_path(identity: Identity, path: str) -> str:
    """moat's PATH without the directories ``identity`` cannot enter (root's ~/.local/bin, a venv under
    /root): a shell that meets one answers "Permission denied" (126) for a command that is not there."""
    kept = [entry for entry in path.split(os.pathsep) if entry.startswith("/") and reachable(entry, identity)]
    return os.pathsep.join(kept) or "/usr/bin:/bin"


def base_env(identity: Identity, extra: Mapping[str, str] = {}) -> dict[str, str]:
    """What every sandbox process gets, whatever moat's own environment holds."""
    return {"PATH": search_path(identity, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")),
            "LANG": os.environ.get("LANG", "C.UTF-8"), **extra}


def holder(identity: Identity, tag: str, info_fd: int) -> list[str]:
    # No --dev and no --proc: either would make bwrap nest a second user namespace, which the
    # identity could not enter the network namespace through.
    return ["bwrap", "--unshare-user", "--uid", str(identity.uid), "--gid", str(identity.gid), "--unshare-net",
            "--ro-bind", "/", "/", "--setenv", TAG_VAR, tag, "--info-fd", str(info_fd), "--",
            "sleep", "infinity"]


def enter_network(holder_pid: int) -> list[str]:
    return ["nsenter", f"--target={holder_pid}", "--user", "--net", "--preserve-credentials", "--"]


def enter_container(holder_pid: int, init_pid: int) -> list[str]:
    # In two steps: the container's user namespace is a child of the holder's, which owns the network.
    return [*enter_network(holder_pid), "nsenter", f"--target={init_pid}", "--user", "--mount", "--pid",
            "--preserve-credentials", "--root", "--wd", "--"]


def _dev(tty: str | None) -> list[str]:
    """A private /dev made of the host's harmless devices (bwrap's own --dev would nest a user namespace).

    Never the host's /dev/pts: every terminal of the user would be open to the agent. An interactive
    agent gets its own pty's device (``tty``), and nothing else of /dev/pts."""
    argv = ["--tmpfs", "/dev"]
    for device in _DEVICES:
        argv += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
    argv += ["--tmpfs", "/dev/shm",  # noqa: S108 — a private tmpfs
             "--symlink", "/proc/self/fd", "/dev/fd"]
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        argv += ["--symlink", f"/proc/self/fd/{number}", f"/dev/{name}"]
    if tty is not None:
        argv += ["--dev-bind", tty, tty]
    return argv


@dataclass(frozen=True)
class Bind:
    source: str  # a host path
    target: str  # where the container sees it
    read_only: bool = False
    excluded: tuple[str, ...] = ()  # paths under it hidden by empty in-memory directories (the identity's)

    def argv(self) -> list[str]:
        hidden = [arg for path in self.excluded for arg in ("--tmpfs", f"{self.target.rstrip('/')}/{path}")]
        return ["--ro-bind" if self.read_only else "--bind", self.source, self.target, *hidden]


def mount_point_possible(target: str, home: str) -> bool:
    """Whether bwrap can mount at ``target`` in an agent's view: the host's top-level directories are
    read-only binds (nothing can be made in them), the rest (a new top-level directory, /tmp, /run,
    /workspace, the agent's home) is the sandbox's own."""
    top = target.split("/")[1]
    if top in _NOT_SHARED or not os.path.lexists(f"/{top}"):
        return True
    if target == home or target.startswith(home.rstrip("/") + "/"):
        return True
    return os.path.lexists(target)


HIDDEN = ("/tmp", "/run")  # noqa: S108 — a service's own: the host's are not shown


def service_view(home: Bind, data: str, in_memory: bool, hosts_fd: int, programs: Sequence[str] = ()) -> list[str]:
    """The host read-only; the service's scratch directory read-write at ``home.target``; its own /tmp
    and /run, except for the directories of ``programs`` found there (a tool installed under /tmp)."""
    # A program's link and what it links to (a tool linked into a directory of its own, as tests do).
    paths = {q for p in programs if Path(p).is_absolute() for q in (p, os.path.realpath(p))}
    shown = sorted({str(Path(p).parent) for p in paths if p.startswith(tuple(f"{h}/" for h in HIDDEN))})
    return ["--ro-bind", "/", "/", *_dev(None), "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run",  # noqa: S108
            *[arg for directory in shown for arg in ("--ro-bind", directory, directory)],
            *home.argv(), *(["--tmpfs", data] if in_memory else ["--dir", data]),
            "--ro-bind-data", str(hosts_fd), "/etc/hosts"]


# Where credentials live in a home directory: hidden from the agent, which sees the host's files
# (a token it could read there would make its grants pointless). Directories get an empty tmpfs, files
# /dev/null.
CREDENTIAL_PATHS = (".ssh", ".aws", ".azure", ".config/gcloud", ".config/gh", ".config/hub", ".docker", ".kube",
                    ".gnupg", ".netrc", ".npmrc", ".pypirc", ".git-credentials", ".local/share/keyrings",
                    ".local/share/python_keyring", ".password-store", ".claude", ".claude.json", ".codex",
                    ".gemini", ".config/op", ".moat")


def hidden_paths(moat_home: Path, homes: Sequence[str], identity: Identity) -> list[Path]:
    """What the agent must not see: moat's own home (the credential store, its key, the proxy's control
    socket, other runs' records) and the credentials in the users' home directories. What the identity
    cannot reach is hidden already (and bwrap, running as the identity, could not mount over it)."""
    found = [moat_home]
    for home in dict.fromkeys(homes):
        found += [Path(home) / name for name in CREDENTIAL_PATHS]
    return [p for p in dict.fromkeys(found) if os.path.lexists(p) and reachable(str(p.parent), identity)]


def _under_tmp(path: Path) -> bool:
    """The agent's /tmp and /run are its own already (and a path there cannot be hidden twice)."""
    return path.parts[1:2] in (("tmp",), ("run",))


def hide(paths: Sequence[Path]) -> list[str]:
    argv: list[str] = []
    for path in paths:
        if path.is_symlink():
            continue  # bwrap would follow it; what it points to is hidden by its own entry, or not shared
        if path.is_dir():
            argv += ["--tmpfs", str(path)]
        else:
            argv += ["--ro-bind", "/dev/null", str(path)]
    return argv


def agent_view(tmp: Bind, mounts: Sequence[Bind], hosts_fd: int, tty: str | None = None,
               root: Path = Path("/"), hidden: Sequence[Path] = ()) -> list[str]:
    """The host's top-level directories read-only, but ``hidden``; its own /tmp, /run and /dev, and its
    mounts."""
    argv = []
    for entry in sorted(root.iterdir()):
        if entry.name in _NOT_SHARED:
            continue
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry), f"/{entry.name}"]
        elif entry.exists():
            argv += ["--ro-bind", str(entry), f"/{entry.name}"]
    argv += ["--ro-bind", "/sys", "/sys", *_dev(tty), "--proc", "/proc", *tmp.argv(), "--tmpfs", "/run",
             "--ro-bind-data", str(hosts_fd), "/etc/hosts", *hide([p for p in hidden if not _under_tmp(p)])]
    for mount in mounts:
        argv += mount.argv()
    return argv


@dataclass(frozen=True)
class Box:
    """One container's bwrap."""

    identity: Identity
    tag: str
    hostname: str
    view: Sequence[str]
    workdir: str
    info_fd: int
    status_fd: int
    block_fd: int

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["bwrap", "--unshare-user", "--uid", str(self.identity.uid), "--gid", str(self.identity.gid),
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", self.hostname[:63],
                # Its own session, without moat's terminal: signals reach only its own processes, and
                # no process in it can push input into the terminal moat was started from (TIOCSTI).
                "--new-session", "--setenv", TAG_VAR, self.tag, *self.view,
                "--info-fd", str(self.info_fd), "--json-status-fd", str(self.status_fd),
                "--block-fd", str(self.block_fd), "--chdir", self.workdir, "--", *command]
