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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
    location: str  # OWNER/REPO, a git URL, or the directory's absolute path on the host

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
    if not block.plugins and not block.marketplaces:
        return None
    marketplaces = []
    for name, spec in sorted(block.marketplaces.items()):
        if spec.source == "github":
            location = spec.repo
        elif spec.source == "git":
            location = spec.url
        else:
            location = str((workspace / Path(spec.path).expanduser()).resolve())
        marketplaces.append(MarketplaceSource(name, spec.source, location))
    install = tuple(sorted(key for key, on in block.plugins.items() if on))
    return PluginSet(tuple(marketplaces), install, dict(sorted(block.plugins.items())))


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
            source = {"source": "directory", "path": market.location}
        entries[market.name] = {"source": source,
                                "installLocation": f"{home}/.claude/plugins/marketplaces/{market.name}",
                                "lastUpdated": "1970-01-01T00:00:00.000Z"}
    return json.dumps(entries, indent=2, sort_keys=True) + "\n"


def dockerfile_lines(plugins: PluginSet, home: str, uid: int, gid: int, trust: str = "") -> list[str]:
    """After the agent's user exists, as that user: the marketplaces unpacked, then each plugin."""
    root = f"{home}/.claude/plugins"
    commands = [f"mkdir -p {root}/marketplaces"]
    for market in plugins.marketplaces:
        target = f"{root}/marketplaces/{market.name}"
        commands.append(f"mkdir -p {target} && tar -xf {STAGING}/{market.name}.tar -C {target} --no-same-owner")
    if plugins.marketplaces:
        commands.append(f"cp {STAGING}/known_marketplaces.json {root}/known_marketplaces.json")
    commands += [f"{QUIET} claude plugin install {shlex.quote(key)}" for key in plugins.install]
    commands.append(f"rm -rf {STAGING}")
    return [f"COPY --chown={uid}:{gid} {CONTEXT_DIR}/ {STAGING}/",
            f"RUN {trust}" + " && ".join(commands)]


def context_files(plugins: PluginSet, home: str) -> dict[str, str]:
    """What the build context holds at plan time (the archives come when the image is built)."""
    return {f"{CONTEXT_DIR}/known_marketplaces.json": known_marketplaces(plugins, home)}


def fetch(plugins: PluginSet, env: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Each marketplace as a tar archive (no .git, regular files and directories only), by its
    place in the build context."""
    out: dict[str, bytes] = {}
    for market in plugins.marketplaces:
        if market.source == "directory":
            out[market.archive] = _archive(Path(market.location), market.name)
            continue
        with tempfile.TemporaryDirectory(prefix="moat-marketplace-") as directory:
            _clone(market, Path(directory) / "clone", env)
            out[market.archive] = _archive(Path(directory) / "clone", market.name)
    return out


def _clone(market: MarketplaceSource, target: Path, env: Mapping[str, str] | None) -> None:
    url = market.clone_url()
    command = ["git", "clone", "--quiet", "--depth", "1", "--no-recurse-submodules", "--", url, str(target)]
    environment = {**(env if env is not None else os.environ), "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=CLONE_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise MoatError(f"claude.marketplaces.{market.name}: git is not installed on this machine",
                               hint="moat clones each marketplace with the host's git; install git.") from None
    except subprocess.TimeoutExpired:
        raise MoatError(f"claude.marketplaces.{market.name}: cloning {url} took over {CLONE_TIMEOUT:.0f}s",
                               hint="Check the network, or use a directory marketplace.") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split())[-400:]
        raise MoatError(f"claude.marketplaces.{market.name}: git could not clone {url}: {said}",
                               hint="Check the repository and your access to it (moat uses your git and its"
                                    " credentials); nothing was started.")


def _archive(root: Path, name: str) -> bytes:
    try:
        if not root.is_dir():
            raise MoatError(f"claude.marketplaces.{name}: {root} is not a directory",
                                   hint="Give the marketplace's directory (relative to the workspace).")
        buffer = io.BytesIO()
        size = 0
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(root.rglob("*")):
                relative = path.relative_to(root)
                if ".git" in relative.parts:
                    continue
                info = path.lstat()
                # Links are left out: one could carry a host file (~/.ssh/…) into the image.
                if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                    continue
                entry = tarfile.TarInfo(relative.as_posix())
                entry.mode = stat.S_IMODE(info.st_mode) & 0o777  # executable hooks stay so; no setuid
                if stat.S_ISDIR(info.st_mode):
                    entry.type = tarfile.DIRTYPE
                    tar.addfile(entry)
                    continue
                size += info.st_size
                if size > MAX_ARCHIVE:
                    raise MoatError(f"claude.marketplaces.{name}: over {MAX_ARCHIVE >> 20} MiB",
                                           hint="A marketplace holds plugin definitions; this one is too big.")
                entry.size = info.st_size
                with path.open("rb") as data:
                    tar.addfile(entry, data)
        return buffer.getvalue()
    except OSError as exc:
        raise MoatError(f"claude.marketplaces.{name}: could not read {root}: {exc.strerror or exc}",
                               hint="Check the directory and its permissions.") from None
