"""``moat volumes ls|rm|prune``: the volumes runs keep across runs (moat.yaml's ``volumes``), per run
name: directories under MOAT_HOME/volumes (type bind) and Docker named volumes labelled as moat's
for this MOAT_HOME (type volume). A volume an active run of that name uses is never removed."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from moat.cli.table import echo_table
from moat.files import tree_size


@dataclass(frozen=True)
class KeptVolume:
    scope: str  # the run name it is kept for
    name: str
    kind: str  # "bind" (a directory) or "volume" (Docker's)
    location: str  # the directory, or the Docker volume's name
    size_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_name": self.scope, "volume": self.name, "type": self.kind, "location": self.location,
                "size_bytes": self.size_bytes}


def _directories(home: Path) -> list[KeptVolume]:
    from moat.plan.storage import VOLUMES_DIR

    root = home / VOLUMES_DIR
    if not root.is_dir():
        return []
    found = []
    for scope in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for volume in sorted(p for p in scope.iterdir() if p.is_dir() and not p.is_symlink()):
            found.append(KeptVolume(scope.name, volume.name, "bind", str(volume), tree_size(volume)))
    return found


def _engine_volumes(home: Path, required: bool) -> tuple[list[KeptVolume], Any]:
    """Docker's volumes of this MOAT_HOME (none, and no runtime, when no engine answers)."""
    from moat.constants import LABEL_HOME, LABEL_VOLUME
    from moat.errors import EngineError
    from moat.ownership import home_id
    from moat.runtime.docker import DockerRuntime

    try:
        runtime = DockerRuntime()
        runtime.ping()
    except EngineError:
        if required:
            raise
        return [], None
    found = []
    for obj in runtime.objects_with_label(LABEL_VOLUME):
        if obj.kind != "volume" or obj.labels.get(LABEL_HOME) != home_id(home):
            continue
        scope, _, volume = obj.labels[LABEL_VOLUME].partition("/")
        found.append(KeptVolume(scope, volume, "volume", obj.id))
    return found, runtime


def _active_names() -> set[str]:
    """The run names whose volumes an active run uses (its recorded scopes; its name, for a run
    recorded before scopes were)."""
    from moat.run.registry import Registry
    from moat.run.store import RunStore

    found: set[str] = set()
    for run in Registry(RunStore()).all():
        if run.active:
            scopes = run.metadata.get("volume_scopes")
            found |= set(scopes) if isinstance(scopes, list) else {run.name}
    return found


@click.group()
def volumes() -> None:
    """The volumes runs keep across runs (moat.yaml's volumes), per run name."""


@volumes.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls(as_json: bool) -> None:
    """Every kept volume: the run name it belongs to, its type and where it is."""
    from moat.run.report import human_bytes
    from moat.run.store import moat_home

    home = moat_home()
    found = _directories(home) + _engine_volumes(home, required=False)[0]
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in found], indent=2))
        return
    if not found:
        click.echo("No volumes are kept.")
        return
    rows = [("RUN NAME", "VOLUME", "TYPE", "SIZE", "LOCATION")]
    rows += [(v.scope, v.name, v.kind, human_bytes(v.size_bytes) if v.size_bytes is not None else "-", v.location)
             for v in found]
    echo_table(rows)


def _remove(targets: list[KeptVolume], runtime: Any, force: bool, what: str) -> None:
    from moat.cli.prompt import confirm_unless_forced
    from moat.run.store import moat_home

    busy = _active_names()
    kept = [v for v in targets if v.scope in busy]
    targets = [v for v in targets if v.scope not in busy]
    if kept:
        click.echo(f"kept {len(kept)} volume(s) of active runs ({', '.join(sorted({v.scope for v in kept}))});"
                   " stop them first", err=True)
    if not targets:
        click.echo("Nothing to remove.")
        return
    summary = f"{len(targets)} volume(s) of {what}: " + ", ".join(f"{v.scope}/{v.name}" for v in targets)
    confirm_unless_forced(force, f"would remove {summary}", f"Remove {summary}? Their data is lost.")
    home = moat_home()
    for volume in targets:
        if volume.kind == "volume":
            runtime.remove_volume(volume.location)
        else:
            _remove_directory(Path(volume.location), home)
        click.echo(f"removed {volume.scope}/{volume.name} ({volume.kind})")
    from moat.plan.storage import VOLUMES_DIR

    for scope in {v.scope for v in targets if v.kind == "bind"}:
        with contextlib.suppress(OSError):  # not empty: volumes of it remain
            (home / VOLUMES_DIR / scope).rmdir()


def _remove_directory(path: Path, home: Path) -> None:
    try:
        shutil.rmtree(path)
    except PermissionError:  # files an agent wrote as another user (root, in a container)
        from moat.runtime.privileged import remove_as_root

        remove_as_root([path], path.parent, home)


@volumes.command("rm")
@click.argument("run_name")
@click.argument("volume_names", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def rm(run_name: str, volume_names: tuple[str, ...], force: bool) -> None:
    """Remove the volumes kept for RUN_NAME (or only VOLUME_NAMES of them)."""
    from moat.errors import UsageError
    from moat.run.store import moat_home

    home = moat_home()
    directories = [v for v in _directories(home) if v.scope == run_name]
    engine, runtime = _engine_volumes(home, required=False)
    found = directories + [v for v in engine if v.scope == run_name]
    if volume_names:
        unknown = sorted(set(volume_names) - {v.name for v in found})
        if unknown:
            raise UsageError(f"run name {run_name!r} keeps no volume {', '.join(unknown)}",
                             hint="`moat volumes ls` lists them.")
        found = [v for v in found if v.name in volume_names]
    if not found:
        click.echo(f"No volumes are kept for {run_name!r}.")
        return
    _remove(found, runtime, force, repr(run_name))


@volumes.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def prune(force: bool) -> None:
    """Remove every kept volume but those of active runs."""
    from moat.run.store import moat_home

    home = moat_home()
    engine, runtime = _engine_volumes(home, required=False)
    found = _directories(home) + engine
    if not found:
        click.echo("No volumes are kept.")
        return
    _remove(found, runtime, force, "every run name")
