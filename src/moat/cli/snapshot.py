"""``moat snapshot RUN [--label L]``, ``moat snapshot list|prune|restore``: a run's workspace snapshots
(see moat.run.snapshots), as the Go tool names them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from moat.cli.table import echo_table


class SnapshotGroup(click.Group):
    """``moat snapshot RUN`` takes one; ``list``, ``prune`` and ``restore`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["take", *args]
        return super().parse_args(ctx, args)


def _run(reference: str) -> Any:
    from moat.run.registry import Registry
    from moat.run.store import RunStore

    return Registry(RunStore()).resolve(reference)


def _store(run: Any) -> Any:
    from moat.run.snapshots import Snapshots

    return Snapshots(run.directory / "snapshots")


def _selection(run: Any) -> Any:
    from moat.plan.model import SnapshotPolicy
    from moat.run.snapshots import selection_of

    recorded = run.metadata.get("snapshots") or {}
    policy = SnapshotPolicy(use_gitignore=bool(recorded.get("use_gitignore", True)),
                            additional=tuple(recorded.get("additional") or ()))
    return selection_of(policy), int(recorded.get("max_count") or 0), not recorded.get("delete_initial", False)


def _workspace(run: Any) -> Path:
    from moat.errors import UsageError

    workspace = Path(str(run.metadata.get("snapshot_source") or run.metadata.get("workspace") or ""))
    if not workspace.is_absolute() or not workspace.is_dir():
        raise UsageError(f"run {run.id}'s workspace {workspace} is not there any more")
    return workspace


def _owner(path: Path) -> tuple[int, int] | None:
    """Whose restored files are when root restores them: the owner of where they go."""
    if os.geteuid() != 0:
        return None
    info = path.stat()
    return info.st_uid, info.st_gid


def _helper_image(runtime: Any, info: Any) -> str:
    """An image to read the volume through: the run's own, else any agent image moat built here."""
    from moat.constants import AGENT_IMAGE_REPO
    from moat.errors import EngineError

    image = str(info.metadata.get("image") or "")
    if image and runtime.image_exists(image):
        return image
    for other in runtime.images(AGENT_IMAGE_REPO):
        if other.tags:
            return str(other.tags[0])
    raise EngineError(f"no agent image is left to read run {info.id}'s volume with (`moat clean` removed them)",
                      hint="Run anything with moat once (it builds one), then try again.")


def _pod_workspace(info: Any) -> bytes:
    """A running Kubernetes run's workspace, as a tar from its agent's container."""
    from moat.errors import MoatError, UsageError
    from moat.plan.kube.manifests import UPLOAD_DIR
    from moat.run.store import moat_home
    from moat.runtime.kubernetes import backend_at, where

    place = where(info.metadata)
    if place is None or not info.active:
        kept = info.metadata.get("final_snapshot")
        raise UsageError(f"run {info.id} ran in a Kubernetes pod that is gone: "
                         + (f"its snapshot {kept} holds the agent's workspace as it ended" if kept else
                            "the agent's workspace was not kept (its pod ended before moat could copy it out)"),
                         hint=f"moat snapshot list {info.id}")
    engine, namespace, context, pod = place
    code, output = backend_at(engine, namespace, context, moat_home()).exec(
        pod, "agent", ("tar", "-c", "-C", UPLOAD_DIR, "."), timeout=600)
    if code != 0:
        raise MoatError(f"the workspace of {pod} could not be read: {output.decode(errors='replace')[-300:]}")
    return output


@click.group(cls=SnapshotGroup)
def snapshot() -> None:
    """Workspace snapshots: `moat snapshot RUN [--label L]` takes one now; a run takes a pre-run one
    unless moat.yaml disables it. `list`, `prune --keep N` and `restore [--to DIR]` manage them."""


@snapshot.command("take")
@click.argument("run")
@click.option("--label", default="", help="A label to recognise the snapshot by.")
def take(run: str, label: str) -> None:
    """Take a snapshot of RUN's workspace now."""
    from moat.run.snapshots import MANUAL

    info = _run(run)
    selection, max_count, keep_initial = _selection(info)
    volume = info.metadata.get("workspace_volume")
    if info.metadata.get("workspace_in_pod"):  # a Kubernetes pod's copy: read from the pod
        made = _store(info).create_from_tar([_pod_workspace(info)], MANUAL, label=label, max_count=max_count,
                                            keep_initial=keep_initial)
    elif volume:  # a volume workspace: what the agent has there, .git and all
        from moat.runtime.docker import DockerRuntime

        runtime = DockerRuntime()
        runtime.ping()
        made = _store(info).create_from_tar(runtime.export_volume(str(volume), _helper_image(runtime, info)),
                                            MANUAL, label=label, max_count=max_count, keep_initial=keep_initial)
    else:
        made = _store(info).create(_workspace(info), MANUAL, selection, label=label, max_count=max_count,
                                   keep_initial=keep_initial)
    click.echo(f"{made.id} ({made.files} files, {made.size_bytes} bytes)")


@snapshot.command("list")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(run: str, as_json: bool) -> None:
    """RUN's snapshots, oldest first."""
    from moat.run.report import human_bytes

    found = _store(_run(run)).all()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=2))
        return
    if not found:
        click.echo("No snapshots.")
        return
    rows = [("SNAPSHOT ID", "TIME", "TYPE", "SIZE", "LABEL")]
    rows += [(s.id, s.created_at, s.type, human_bytes(s.size_bytes), s.label) for s in found]
    echo_table(rows)


@snapshot.command("prune")
@click.argument("run")
@click.option("--keep", type=click.IntRange(min=0), default=5, show_default=True,
              help="How many snapshots to keep, besides the pre-run one.")
@click.option("--dry-run", is_flag=True, help="Say what would go, remove nothing.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def prune(run: str, keep: int, dry_run: bool, force: bool) -> None:
    """Remove RUN's oldest snapshots, keeping the newest KEEP and the pre-run one."""
    from moat.cli.prompt import confirm_unless_forced
    from moat.run.snapshots import retained

    store = _store(_run(run))
    found = store.all()
    doomed = retained(found, keep, keep_initial=True)
    if len(doomed) == len(found) and found:
        doomed = doomed[:-1]  # never the last one: for a volume workspace, the only copy of its work
    if not doomed:
        click.echo(f"Nothing to prune ({len(found)} snapshot(s)).")
        return
    for snap in doomed:
        click.echo(f"  {snap.id} ({snap.created_at}, {snap.type})")
    if dry_run:
        click.echo(f"{len(doomed)} snapshot(s) would be removed (dry run).")
        return
    confirm_unless_forced(force, f"would remove {len(doomed)} snapshot(s)",
                          f"Remove these {len(doomed)} snapshot(s)?")
    store.delete(doomed)
    click.echo(f"Removed {len(doomed)} snapshot(s).")


@snapshot.command("restore")
@click.argument("run")
@click.argument("snapshot_id", required=False)
@click.option("--to", "to", type=click.Path(path_type=Path),
              help="Restore into this directory (missing or empty) instead of the workspace.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation (restoring in place).")
def restore(run: str, snapshot_id: str | None, to: Path | None, force: bool) -> None:
    """Restore RUN's workspace from a snapshot (default: the newest), or extract it --to DIR. In place,
    what a snapshot takes is replaced by the snapshot's; .git and ignored files stay."""
    from moat.cli.prompt import confirm_unless_forced
    from moat.errors import UsageError

    info = _run(run)
    store = _store(info)
    chosen = store.get(snapshot_id)
    if to is not None:
        target = to.expanduser().absolute()
        store.restore_to(chosen, target, _owner(target.parent) if target.parent.is_dir() else None)
        click.echo(f"Restored {chosen.id} ({chosen.created_at}) into {target}.")
        return
    if info.metadata.get("workspace_volume") or info.metadata.get("workspace_copied"):
        raise UsageError(f"run {info.id} worked on a copy of the workspace (workspace.mode: volume, or a"
                         " Kubernetes pod's): restoring"
                         " in place would write its work over your tree",
                         hint=f"Restore it elsewhere: moat snapshot restore {info.id} --to DIR.")
    if info.active:
        raise UsageError(f"run {info.id} is active: its agent may be writing the workspace",
                         hint="Stop it first (moat stop), or restore elsewhere with --to DIR.")
    workspace = _workspace(info)
    confirm_unless_forced(force, "restoring replaces the workspace's files",
                          f"Replace {workspace}'s files with {chosen.id} ({chosen.created_at})? Files added since"
                          " are deleted, changed ones reverted (.git and ignored files stay).")
    selection, _, _ = _selection(info)
    store.restore_in_place(chosen, workspace, selection, _owner(workspace))
    click.echo(f"Restored {workspace} to {chosen.id} ({chosen.created_at}).")
