"""Claude Code plugins (``claude.plugins``) and their marketplaces (``claude.marketplaces``), built
into the agent image as the Go tool builds them.

Each marketplace is fetched on the host when the image is built — ``git clone`` with the host's own
git credentials (a private repository works), or a directory of the host — and copied into the
build as one archive: the build itself needs no access to the repository. In the image, as the
agent's user, each archive becomes ``~/.claude/plugins/marketplaces/<name>``, listed in
``known_marketplaces.json`` under its source, and ``claude plugin install`` installs each plugin
set to true. The image's tag names the marketplaces and plugins, not their content: a new commit
in a marketplace is picked up by ``--rebuild``, as a new release of an npm tool is.

Pure, except ``fetch`` (git, files), which runs only when the image is built.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moat.config.langservers import OFFICIAL_MARKETPLACE, OFFICIAL_MARKETPLACE_REPO
from moat.config.schema import ClaudeConfig
from moat.errors import MoatError

CONTEXT_DIR = "claude-marketplaces"  # in the build context: <name>.tar for each marketplace
STAGING = "/tmp/moat-marketplaces"  # noqa: S108 — in the image, during the build step only
CLONE_TIMEOUT = 300.0
MAX_ARCHIVE = 256 * 1024 * 1024  # a marketplace is plugin definitions, not a data set
# What the build's claude must not do: update itself, send telemetry (it runs with the build's network).
QUIET = "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1"


@dataclass(frozen=True)
class MarketplaceSource:
    name: str
    source: str  # github, git or directory
    location: str  # OWNER/REPO, a git URL, or the directory's path on the host (in the workspace)
    ref: str = ""  # a branch or tag to clone (github, git)
    written: str = ""  # a directory's path as moat.yaml has it (what the image records, not the host's)

    @property
    def archive(self) -> str:
        return f"{CONTEXT_DIR}/{self.name}.tar"

    def clone_url(self) -> str:
        return f"https://github.com/{self.location}.git" if self.source == "github" else self.location


@dataclass(frozen=True)
class PluginSet:
    marketplaces: tuple[MarketplaceSource, ...]
    install: tuple[str, ...]  # plugin@marketplace, the ones set to true
    enabled: Mapping[str, bool]  # as moat.yaml has them (false ones stay disabled)


def plugin_set(block: ClaudeConfig, workspace: Path) -> PluginSet | None:
    """moat.yaml's plugins and marketplaces (``workspace``: where a directory marketplace is)."""
    if not block.plugins and not block.marketplaces:
        return None
    marketplaces = []
    for name, spec in sorted(block.marketplaces.items()):
        if spec.source == "github":
            location = spec.repo
        elif spec.source == "git":
            location = spec.url
        else:
            location = str(workspace / spec.path)  # checked when fetched: inside the workspace, no link on the way
        marketplaces.append(MarketplaceSource(name, spec.source, location, spec.ref,
                                              spec.path if spec.source == "directory" else ""))
    install = tuple(sorted(key for key, on in block.plugins.items() if on))
    return PluginSet(tuple(marketplaces), install, dict(sorted(block.plugins.items())))


def with_plugins(plugins: PluginSet | None, more: tuple[str, ...]) -> PluginSet | None:
    """``plugins`` with more plugins enabled (the language servers': the official marketplace's, which
    is added unless moat.yaml names one of that name)."""
    if not more:
        return plugins
    base = plugins or PluginSet((), (), {})
    enabled = {**{p: True for p in more}, **base.enabled}  # moat.yaml's own setting of one wins
    install = tuple(sorted(key for key, on in enabled.items() if on))
    marketplaces = base.marketplaces
    if not any(m.name == OFFICIAL_MARKETPLACE for m in marketplaces) and any(
            p.endswith(f"@{OFFICIAL_MARKETPLACE}") and enabled[p] for p in more):
        marketplaces = (*marketplaces, MarketplaceSource(OFFICIAL_MARKETPLACE, "github", OFFICIAL_MARKETPLACE_REPO))
    if not install and not marketplaces:
        return None
    return PluginSet(tuple(sorted(marketplaces, key=lambda m: m.name)), install, dict(sorted(enabled.items())))


def known_marketplaces(plugins: PluginSet, home: str) -> str:
    """``~/.claude/plugins/known_marketplaces.json``: each marketplace under the source moat.yaml
    names, already in place (Claude Code does not fetch it again)."""
    entries: dict[str, object] = {}
    for market in plugins.marketplaces:
        if market.source == "github":
            source = {"source": "github", "repo": market.location}
        elif market.source == "git":
            source = {"source": "git", "url": market.location}
        else:
            source = {"source": "directory", "path": market.written}
        entries[market.name] = {"source": source,
                                "installLocation": f"{home}/.claude/plugins/marketplaces/{market.name}",
                                "lastUpdated": "1970-01-01T00:00:00.000Z"}
    return json.dumps(entries, indent=2, sort_keys=True) + "\n"


def dockerfile_lines(plugins: PluginSet, home: str, uid: int, gid: int, trust: str = "") -> list[str]:
    """After the agent's user exists, as that user: the marketplaces unpacked, then each plugin."""
    root = f"{home}/.claude/plugins"
    # What each marketplace is, in the Dockerfile: the image's tag changes with it (its content is
    # fetched at build time and is not in the tag).
    described = [f"# claude marketplace {m.name}: {m.source} {m.written or m.location}{'@' + m.ref if m.ref else ''}"
                 for m in plugins.marketplaces]
    commands = [f"mkdir -p {root}/marketplaces"]
    for market in plugins.marketplaces:
        target = f"{root}/marketplaces/{market.name}"
        commands.append(f"mkdir -p {target} && tar -xf {STAGING}/{market.name}.tar -C {target} --no-same-owner")
    if plugins.marketplaces:
        commands.append(f"cp {STAGING}/known_marketplaces.json {root}/known_marketplaces.json")
    commands += [f"{QUIET} claude plugin install {shlex.quote(key)}" for key in plugins.install]
    commands.append(f"rm -rf {STAGING}")
    return [*described, f"COPY --chown={uid}:{gid} {CONTEXT_DIR}/ {STAGING}/",
            f"RUN {trust}" + " && ".join(commands)]


def context_files(plugins: PluginSet, home: str) -> dict[str, str]:
    """What the build context holds at plan time (the archives come when the image is built)."""
    return {f"{CONTEXT_DIR}/known_marketplaces.json": known_marketplaces(plugins, home)}


def _open_inside(workspace: Path, relative: Path, name: str) -> int:
    """A directory marketplace, opened one component at a time from the workspace, never through a
    link: the agent can write the workspace, and a link there could bring any file of the host into
    the image. A descriptor: what is read is what was checked."""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts:
            if part in ("..", "/"):
                raise MoatError(f"claude.marketplaces.{name}: {relative} leaves the workspace",
                                hint="Give a directory inside the workspace, relative to it.")
            if part == ".":
                continue
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                raise MoatError(f"claude.marketplaces.{name}: {workspace / relative} is not a directory of the"
                                " workspace (missing, or a link)",
                                hint="A directory marketplace is copied into the image: give a real directory"
                                     " inside the workspace.") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def fetch(plugins: PluginSet, workspace: Path, env: Mapping[str, str] | None = None,
          abort: threading.Event | None = None) -> dict[str, bytes]:
    """Each marketplace as a tar archive (no .git, regular files and directories only), by its
    place in the build context. ``abort`` ends a clone under way (the run is ending)."""
    out: dict[str, bytes] = {}
    for market in plugins.marketplaces:
        if market.source == "directory":
            fd = _open_inside(workspace, Path(market.written), market.name)
            try:
                out[market.archive] = _archive(fd, market.name, workspace / market.written)
            finally:
                os.close(fd)
            continue
        with tempfile.TemporaryDirectory(prefix="moat-marketplace-") as directory:
            _clone(market, Path(directory) / "clone", env, abort)
            fd = os.open(Path(directory) / "clone", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                out[market.archive] = _archive(fd, market.name, Path(market.clone_url()))
            finally:
                os.close(fd)
    return out


def _clone(market: MarketplaceSource, target: Path, env: Mapping[str, str] | None,
           abort: threading.Event | None) -> None:
    url = market.clone_url()
    branch = ["--branch", market.ref] if market.ref else []
    command = ["git", "clone", "--quiet", "--depth", "1", "--no-recurse-submodules", *branch, "--", url, str(target)]
    environment = {**(env if env is not None else os.environ), "GIT_TERMINAL_PROMPT": "0"}
    try:
        process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise MoatError(f"claude.marketplaces.{market.name}: git is not installed on this machine",
                        hint="moat clones each marketplace with the host's git; install git.") from None
    deadline = time.monotonic() + CLONE_TIMEOUT
    stderr = ""
    while True:
        try:
            _, stderr = process.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if (abort is not None and abort.is_set()) or time.monotonic() > deadline:
                process.kill()  # not left cloning after the run (or its patience) has ended
                process.communicate()
                if abort is not None and abort.is_set():
                    raise MoatError(f"claude.marketplaces.{market.name}: the clone was stopped") from None
                raise MoatError(f"claude.marketplaces.{market.name}: cloning {url} took over {CLONE_TIMEOUT:.0f}s",
                                hint="Check the network, or use a directory marketplace.") from None
    if process.returncode != 0:
        said = " ".join(stderr.split())[-400:]
        raise MoatError(f"claude.marketplaces.{market.name}: git could not clone {url}: {said}",
                               hint="Check the repository and your access to it (moat uses your git and its"
                                    " credentials); nothing was started.")


def _archive(root_fd: int, name: str, shown: Path) -> bytes:
    """The directory open at ``root_fd`` as a tar archive, read through descriptors that never
    follow a link (a file swapped for one while it is read is left out, not followed)."""
    root = shown
    try:
        buffer = io.BytesIO()
        size = 0
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for top, dirs, files, top_fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
                dirs[:] = sorted(d for d in dirs if d != ".git")
                relative_top = Path(top)
                for directory in dirs:
                    info = os.stat(directory, dir_fd=top_fd, follow_symlinks=False)
                    if not stat.S_ISDIR(info.st_mode):
                        continue
                    entry = tarfile.TarInfo((relative_top / directory).as_posix())
                    entry.type, entry.mode = tarfile.DIRTYPE, stat.S_IMODE(info.st_mode) & 0o777
                    tar.addfile(entry)
                for file in sorted(files):
                    try:
                        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=top_fd)
                    except OSError:
                        continue  # a link (O_NOFOLLOW), or gone: links never enter (one could carry ~/.ssh in)
                    with os.fdopen(fd, "rb") as data:
                        info = os.fstat(data.fileno())
                        if not stat.S_ISREG(info.st_mode):
                            continue
                        size += info.st_size
                        if size > MAX_ARCHIVE:
                            raise MoatError(f"claude.marketplaces.{name}: over {MAX_ARCHIVE >> 20} MiB",
                                            hint="A marketplace holds plugin definitions; this one is too big.")
                        entry = tarfile.TarInfo((relative_top / file).as_posix())
                        entry.size = info.st_size
                        entry.mode = stat.S_IMODE(info.st_mode) & 0o777  # executable hooks stay so; no setuid
                        tar.addfile(entry, data)
        return buffer.getvalue()
    except OSError as exc:
        raise MoatError(f"claude.marketplaces.{name}: could not read {root}: {exc.strerror or exc}",
                        hint="Check the directory and its permissions.") from None
