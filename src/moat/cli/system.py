"""``moat system images|containers|clean-temp``: the low-level view the Go tool gives, over every
runtime that may hold something of moat's (the sandbox always, Docker when it answers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from moat.cli.table import echo_table

SCRATCH_RE = re.compile(r"moat-(run_[0-9a-f]{12})")
DURATION_RE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age(created: float, now: float) -> str:
    if not created:
        return "-"
    seconds = max(0, now - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _iso(created: float) -> str | None:
    return datetime.fromtimestamp(created, UTC).isoformat() if created else None


@click.group()
def system() -> None:
    """Low-level views: moat's images and containers on every runtime, and leftover temporary directories."""


@system.command("images")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def images(as_json: bool) -> None:
    """The agent images moat built (moat/run:*), on every runtime that has images."""
    from moat.constants import AGENT_IMAGE_REPO
    from moat.run.report import human_bytes
    from moat.run.store import moat_home
    from moat.runtime import select

    found = [(runtime.name, image) for runtime in select.available(moat_home())
             for image in runtime.images(AGENT_IMAGE_REPO)]
    if as_json:
        click.echo(json.dumps([{"id": i.id, "tag": (i.tags or ("<none>",))[0], "tags": list(i.tags), "size": i.size,
                                "created": _iso(i.created), "runtime": name, "in_use": i.in_use}
                               for name, i in found], indent=2))
        return
    if not found:
        click.echo("No moat images.")
        return
    now = time.time()
    rows = [("IMAGE ID", "TAG", "RUNTIME", "SIZE", "CREATED")]
    rows += [(i.id.removeprefix("sha256:")[:12], (i.tags or ("<none>",))[0], name, human_bytes(i.size),
              _age(i.created, now)) for name, i in found]
    echo_table(rows)


@system.command("containers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def containers(as_json: bool) -> None:
    """Every container of moat's (agents, services, pods' holders), running or not, on every runtime."""
    from moat.constants import LABEL_RUN_ID
    from moat.run.store import moat_home
    from moat.runtime import select

    found = [(runtime.name, c) for runtime in select.available(moat_home()) for c in runtime.containers(LABEL_RUN_ID)]
    if as_json:
        click.echo(json.dumps([{"id": c.id, "name": c.name, "image": c.image, "status": c.status,
                                "created": _iso(c.created), "runtime": name, "run_id": c.labels.get(LABEL_RUN_ID)}
                               for name, c in found], indent=2))
        return
    if not found:
        click.echo("No moat containers.")
        return
    now = time.time()
    rows = [("CONTAINER ID", "NAME", "RUNTIME", "STATUS", "CREATED")]
    rows += [(c.id[:12], c.name, name, c.status, _age(c.created, now)) for name, c in found]
    echo_table(rows)


def _duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d``, or ``1h30m``."""
    parts = DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 1h or 2d")
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


def _live_run_ids(home: Path) -> set[str]:
    """Runs that may still use their directory: this MOAT_HOME's active runs, and any run with a
    container on a runtime (another MOAT_HOME's too)."""
    from moat.constants import LABEL_RUN_ID
    from moat.run.registry import Registry
    from moat.run.store import RunStore
    from moat.runtime import select

    live = {r.id for r in Registry(RunStore(home)).all() if r.active}
    for runtime in select.available(home):
        live |= {o.labels.get(LABEL_RUN_ID, "") for o in runtime.objects_with_label(LABEL_RUN_ID)}
    return live


def leftover_directories(root: Path, min_age: float, live: set[str], now: float) -> list[Path]:
    """moat's per-run directories (``moat-run_<id>``) in ``root``: this user's (any, for root), not
    links, older than ``min_age`` and of no live run."""
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        match = SCRATCH_RE.fullmatch(entry.name)
        if match is None or match.group(1) in live:
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or (os.getuid() != 0 and info.st_uid != os.getuid()):
            continue
        if now - info.st_mtime >= min_age and not _in_use(entry):
            found.append(entry)
    return found


def _in_use(path: Path) -> bool:
    """Whether a process names the directory on its command line (a sandbox's bwrap binds from it,
    whichever MOAT_HOME it belongs to) or works in it."""
    needle = str(path).encode()
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes():
                return True
            if os.readlink(proc / "cwd").startswith(str(path)):
                return True
        except OSError:
            continue
    return False


@system.command("clean-temp")
@click.option("--min-age", default="1h", show_default=True, metavar="DURATION",
              help="Only directories older than this (e.g. 30m, 24h, 2d).")
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def clean_temp(min_age: str, dry_run: bool, force: bool) -> None:
    """Remove leftover per-run temporary directories (moat-run_<id> in the temporary directory) of runs
    that are over: a crashed moat's, or a kept agent's once it is gone."""
    from moat.cli.prompt import confirm_unless_forced
    from moat.errors import MoatError
    from moat.run.store import moat_home

    seconds = _duration(min_age)
    root = Path(tempfile.gettempdir())
    found = leftover_directories(root, seconds, _live_run_ids(moat_home()), time.time())
    if not found:
        click.echo(f"No leftover temporary directories older than {min_age} in {root}.")
        return
    for path in found:
        click.echo(str(path))
    if dry_run:
        click.echo(f"{len(found)} director{'y' if len(found) == 1 else 'ies'} would be removed (dry run).")
        return
    confirm_unless_forced(force, f"would remove {len(found)} directories", f"Remove these {len(found)} directories?")
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    left = [path for path in found if os.path.lexists(path)]
    click.echo(f"Removed {len(found) - len(left)} of {len(found)} directories.")
    if left:
        raise MoatError(f"could not remove {', '.join(str(p) for p in left[:5])}",
                        hint="They hold files of another user: remove them as root.")
