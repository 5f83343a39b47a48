"""``moat clean`` and ``moat status``: what runs left behind, and the state of things."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from moat.files import tree_size


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--images", "all_images", is_flag=True,
              help="Also remove agent images built by other MOAT_HOMEs, and recent ones (any image no "
                   "container uses and no active run names).")
def clean(dry_run: bool, force: bool, all_images: bool) -> None:
    """Remove what runs left on the engine: orphans, finished runs' containers, and agent images no
    run of this MOAT_HOME uses (built here, unused, older than an hour).

    Never touches a run that is being created or is running, nor an image one of them names.
    """
    from moat.cli.prompt import confirm_or_stop
    from moat.errors import MoatError, UsageError
    from moat.run import kubereap, reaper
    from moat.run.registry import Registry
    from moat.run.report import human_bytes
    from moat.run.store import RunStore
    from moat.runtime import select

    store = RunStore()
    registry = Registry(store)
    images: reaper.Images = "all" if all_images else "own"
    work = [(rt, reaper.find(rt, registry, finished=True, images=images)) for rt in select.available(store.home)]
    work = [(rt, found) for rt, found in work if not found.empty]
    pods, strays, unreachable = kubereap.leftovers(registry, store.home)
    for problem in unreachable:
        click.echo(f"could not look: {problem}", err=True)
    if not work and not pods and not strays:
        click.echo("Nothing to clean.")
        return
    for runtime, found in work:
        for obj, why in found.objects:
            click.echo(f"{runtime.name:<8} {obj.kind:<9} {obj.id[:40]:<40} {why}")
        for image in found.images:
            name = image.tags[0] if image.tags else image.id[:19]
            click.echo(f"{runtime.name:<8} {'image':<9} {name:<40} unused ({human_bytes(image.size)})")
        for run in found.orphaned_runs:
            click.echo(f"{runtime.name:<8} {'record':<9} {run.id:<40} marked failed: its moat process is gone")
    for left in pods:
        click.echo(f"{'k8s':<8} {'pod':<9} {left.pod.name[:40]:<40} {left.why}")
    for stray in strays:
        click.echo(f"{'k8s':<8} {stray.kind.lower():<9} {stray.name[:40]:<40} owned by no pod"
                   f" ({'run ' + stray.run_id if stray.run_id else 'a pod that is gone'})")
    if dry_run:
        click.echo("(dry run: nothing removed)")
        return
    if not force:
        if not sys.stdin.isatty():
            raise UsageError("add -f to clean without a terminal to confirm on (or --dry-run to look)")
        confirm_or_stop("Remove these?")
    removed = 0
    for runtime, found in work:
        problems = reaper.remove(runtime, found)
        for problem in problems:
            click.echo(f"could not remove: {problem}", err=True)
        removed += len(found.objects) + len(found.images) - len(problems)
    kube: list[tuple[str, Callable[[], None]]] = [(f"pod {left.pod.name}", left.remove) for left in pods]
    kube += [(f"{stray.kind} {stray.name}", stray.remove) for stray in strays]
    for what, remove in kube:
        try:
            remove()
            removed += 1
        except MoatError as exc:
            click.echo(f"could not remove: {what}: {exc.message}", err=True)
    click.echo(f"removed {removed} objects")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in the README).")
def status(as_json: bool) -> None:
    """The engine, active runs, disk used, and leftovers waiting for `moat clean`."""
    from moat.constants import AGENT_IMAGE_REPO
    from moat.errors import EngineError
    from moat.run import reaper
    from moat.run.registry import Registry
    from moat.run.report import human_bytes
    from moat.run.store import RunStore
    from moat.runtime import select
    from moat.runtime.docker import DockerRuntime, engine_address

    store = RunStore()
    registry = Registry(store)
    runs = registry.all()
    report: dict[str, Any] = {
        "engine": {"address": engine_address(), "answers": False, "version": None, "error": None},
        "home": str(store.home),
        "active_runs": [r.to_dict() for r in runs if r.active],
        "runs_recorded": len(runs),
        "disk": {"runs_bytes": tree_size(store.runs), "cache_bytes": tree_size(store.home / "cache"),
                 "images_bytes": None},
        "orphans": None,
    }
    sandbox = select.make("sandbox", store.home)
    try:
        sandbox.ping()
        report["sandbox"] = {"available": True, "version": sandbox.version(), "error": None}
    except EngineError as exc:
        report["sandbox"] = {"available": False, "version": None, "error": exc.message}
    orphans = reaper.find(sandbox, registry, finished=False)
    report["orphans"] = {"objects": len(orphans.objects), "runs": len(orphans.orphaned_runs)}
    try:
        runtime = DockerRuntime()
        runtime.ping()
        report["engine"].update(answers=True, version=runtime.version())
        report["disk"]["images_bytes"] = sum(i.size for i in runtime.images(AGENT_IMAGE_REPO))
        found = reaper.find(runtime, registry, finished=False)
        report["orphans"]["objects"] += len(found.objects)
        report["orphans"]["runs"] = len({r.id for r in [*orphans.orphaned_runs, *found.orphaned_runs]})
    except EngineError as exc:
        report["engine"]["error"] = exc.message
    report["kubernetes"] = _kubernetes_status(store.home)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    engine = report["engine"]
    answer = engine["version"] if engine["answers"] else f"not answering ({engine['error']})"
    click.echo(f"engine     {engine['address']}: {answer}")
    sandbox_info = report["sandbox"]
    click.echo(f"sandbox    {sandbox_info['version'] if sandbox_info['available'] else sandbox_info['error']}")
    kube = report["kubernetes"]
    if kube is not None:
        state = f"{kube['pods']} pods of this home" if kube["answers"] else f"not answering ({kube['error']})"
        click.echo(f"kubernetes {kube['engine']}, namespace {kube['namespace']}: {state}")
    click.echo(f"home       {report['home']}")
    click.echo(f"runs       {len(report['active_runs'])} active, {report['runs_recorded']} recorded")
    for run in report["active_runs"]:
        click.echo(f"             {run['id']}  {run['name']}  {run['state']}  {', '.join(run['services'])}")
    disk = report["disk"]
    images = "?" if disk["images_bytes"] is None else human_bytes(disk["images_bytes"])
    click.echo(f"disk       runs {human_bytes(disk['runs_bytes'])}, cache {human_bytes(disk['cache_bytes'])},"
               f" agent images {images}")
    if report["orphans"] is not None:
        orphans = report["orphans"]
        hint = " (`moat clean` removes them)" if orphans["objects"] or orphans["runs"] else ""
        click.echo(f"orphans    {orphans['objects']} engine objects, {orphans['runs']} runs{hint}")


def _kubernetes_status(home: Any) -> dict[str, Any] | None:
    """The configured Kubernetes engine (MOAT_HOME/config.yaml), when there is one: does it answer,
    and how many pods of this MOAT_HOME it holds."""
    from moat.config.home import load_home_config
    from moat.errors import MoatError
    from moat.ownership import home_id
    from moat.runtime.kubernetes import backend_for

    config = load_home_config(home)
    if config.file is None:
        return None
    settings = config.kubernetes
    report: dict[str, Any] = {"engine": settings.engine, "namespace": settings.namespace, "context": settings.context,
                              "answers": False, "error": None, "pods": None}
    try:
        pods = backend_for(settings, home).pods()
        report.update(answers=True, pods=sum(1 for p in pods if p.home == home_id(home)))
    except MoatError as exc:
        report["error"] = exc.message
    return report
