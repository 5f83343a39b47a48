"""``moat list``, ``moat logs``, ``moat stop`` and ``moat destroy``: the runs in the run store."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from moat.cli.table import echo_table

FOLLOW_POLL = 0.1  # seconds between looks at a live run's log


def _registry() -> Any:
    from moat.run.registry import Registry
    from moat.run.store import RunStore

    return Registry(RunStore())


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in the README).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished runs.")
def list_runs(as_json: bool, show_all: bool) -> None:
    """Runs, newest first: active ones, or every recorded run with --all."""
    runs = _registry().all()
    shown = [r for r in runs if show_all or r.active or r.state == "orphaned"]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in shown], indent=2))
        return
    if not shown:
        finished = len(runs)
        click.echo("No active runs." + (f" `moat list --all` shows {finished} finished." if finished else ""))
        return
    rows = [("NAME", "RUN ID", "STATE", "EXIT", "AGE", "SERVICES")]
    for run in shown:
        info = run.to_dict()
        exit_code = "-" if info["exit_code"] is None else str(info["exit_code"])
        services = ", ".join(info["services"]) or "-"
        rows.append((run.name, run.id, run.state, exit_code, _age(run.age_seconds()), services))
    echo_table(rows)


def _format(record: dict[str, Any]) -> str:
    stamp = str(record.get("ts", ""))
    clock = stamp[11:23] if len(stamp) >= 23 else stamp
    return f"{clock} {record.get('stream', '?'):<6} {record.get('line', '')}"


def _read_records(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines from ``offset``; a partly written last line waits for the next look."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records, offset + end


@click.command()
@click.argument("run", required=False)
@click.option("-n", "--lines", "lines", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--service", help="A service's log instead of the agent's.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
def logs(run: str | None, lines: int | None, follow: bool, service: str | None, as_json: bool) -> None:
    """A run's output (default: the most recent run), with times and streams."""
    registry = _registry()
    info = registry.resolve(run) if run else registry.latest(active=False)
    if service:
        _service_logs(info, service, lines, follow)
        return
    from moat.run.store import LOGS

    path = info.directory / LOGS
    records, offset = _read_records(path, 0)
    if lines is not None:
        records = records[-lines:] if lines else []
    _emit(records, as_json)
    while follow:
        current = registry.get(info.id)
        new, offset = _read_records(path, offset)
        _emit(new, as_json)
        if not new and (current is None or not current.active):
            new, offset = _read_records(path, offset)  # what was written while we looked
            _emit(new, as_json)
            return
        if not new:
            time.sleep(FOLLOW_POLL)


def _emit(records: list[dict[str, Any]], as_json: bool) -> None:
    for record in records:
        click.echo(json.dumps(record, ensure_ascii=False) if as_json else _format(record))
    sys.stdout.flush()


def _service_logs(info: Any, service: str, lines: int | None, follow: bool) -> None:
    from moat.errors import MoatError, UsageError
    from moat.run.store import SERVICE_LOGS_DIR
    from moat.suggest import did_you_mean

    names = [s.get("name") for s in info.metadata.get("services", [])]
    if service not in names:
        raise UsageError(f"run {info.id} has no service '{service}'{did_you_mean(service, names)}"
                         f" (its services: {', '.join(names) or 'none'})")
    saved = info.directory / SERVICE_LOGS_DIR / f"{service}.log"
    container = next((s.get("container_id") for s in info.metadata["services"] if s.get("name") == service), None)
    runtime = _runtime_of(info) if info.active and container else None
    if runtime is not None:
        # A live service's log comes from the engine unmasked: its passwords are read back from the
        # environment it was given, and masked as the saved log is.
        from moat.masking import Masker, credential_values

        try:
            masker = Masker(credential_values(runtime.container_env(container)))
        except MoatError as exc:
            # Without its credentials the live log could not be masked: it is never shown unmasked.
            raise MoatError(f"cannot show {service}'s live log: its passwords could not be read back to mask"
                            f" them ({exc.message})",
                            hint="Its log is saved, masked, when the run ends: `moat logs --service` then.") from None
        if follow:
            for line in runtime.follow_logs(container, tail=lines):
                click.echo(masker.text(line))
            return
        click.echo(masker.text(runtime.logs(container, tail=lines, timestamps=True)), nl=False)
        return
    if not saved.exists():
        raise UsageError(f"no log was saved for {service} in run {info.id}")
    text = saved.read_text(errors="replace")
    if lines is not None:
        text = "\n".join(text.splitlines()[-lines:]) + "\n" if lines else ""
    click.echo(text, nl=False)


def _runtime_of(info: Any) -> Any:
    """The runtime the run used, or None where it is not available (a live run needs only its pid)."""
    from moat.run.store import moat_home
    from moat.runtime import select

    return select.for_run(info.metadata, moat_home())


@click.command()
@click.argument("runs", nargs=-1)
@click.option("-t", "--timeout", default=60.0, show_default=True, help="Seconds to wait for each run to stop.")
def stop(runs: tuple[str, ...], timeout: float) -> None:
    """Stop runs (default: the most recent active run); their services and network are removed."""
    from moat.run import control

    registry = _registry()
    targets = [registry.resolve(r) for r in runs] if runs else [registry.latest(active=True)]
    for info in targets:
        click.echo(control.stop(registry, info, _runtime_of(info), timeout))


def _extracted(info: Any) -> bool:
    """Whether a volume workspace's work was restored out of moat (its snapshots go with its record)."""
    from moat.run.snapshots import Snapshots

    return bool(Snapshots(info.directory / "snapshots").extracted())


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True,
              help="Stop a running run first instead of refusing; discard a volume workspace without a snapshot.")
def destroy(runs: tuple[str, ...], force: bool) -> None:
    """Remove runs' records (and anything they left on the engine)."""
    from moat.errors import UsageError
    from moat.run import control
    from moat.run.reaper import remove_scratch

    registry = _registry()
    targets = list({t.id: t for t in (registry.resolve(r) for r in runs)}.values())  # each run once
    running = [t for t in targets if t.active]
    if running and not force:
        names = ", ".join(f"{t.id} ({t.name})" for t in running)
        raise UsageError(f"still running: {names}; stop it first (`moat stop`) or use -f")
    unsaved = [t for t in targets if (t.metadata.get("workspace_volume") or t.metadata.get("workspace_copied"))
               and not _extracted(t)]
    if unsaved and not force:
        names = ", ".join(f"{t.id} ({t.name})" for t in unsaved)
        raise UsageError(f"{names} worked on a copy of the workspace (workspace.mode: volume, or a Kubernetes pod's)"
                         " that was never"
                         " extracted: destroying it deletes that volume, its snapshots and all the agent's changes",
                         hint="Extract them first: `moat snapshot RUN`, then `moat snapshot restore RUN --to DIR`;"
                              " or pass -f to discard them.")
    for info in targets:
        runtime = _runtime_of(info)
        if info.active:
            click.echo(control.stop(registry, info, runtime, 60.0))
        volume = info.metadata.get("workspace_volume")
        if volume and runtime is None:
            click.echo(f"kept {info.id} ({info.name}): its engine does not answer, and its volume {volume} (the"
                       " agent's work) could not be removed with it; run `moat destroy` again once it answers",
                       err=True)
            continue
        if info.metadata.get("runtime") == "kubernetes":
            from moat.errors import MoatError
            from moat.run.kubereap import delete_pod

            try:
                click.echo(delete_pod(info, registry.store.home))
            except MoatError as exc:
                if not force:
                    raise MoatError(f"{info.id} ({info.name}): its pod could not be deleted: {exc.message}",
                                    hint="Run `moat destroy` again once the cluster answers, or pass -f to forget"
                                         " the run (its pod, if any is left, then needs kubectl delete).") from None
                click.echo(f"{info.id}: its pod could not be deleted ({exc.message}); forgetting the run", err=True)
        if runtime is not None:
            control.remove_engine_objects(runtime, info.id)
            if volume:
                runtime.remove_volume(str(volume))
        remove_scratch(info)  # while the record still says where (a killed run's, a kept agent's files)
        registry.remove(info)
        click.echo(f"destroyed {info.id} ({info.name})")
