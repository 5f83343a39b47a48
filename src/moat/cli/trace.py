"""``moat trace --network``: every request a run made through moat's proxy (its network.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

BODY_SHOWN = 500  # characters of a recorded body shown with -v


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The records, oldest first; a line cut short by a crash (the proxy killed mid-write) is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line, parse_constant=lambda name: None)  # NaN, Infinity: not JSON
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append({str(k): v for k, v in record.items()})
    return records


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def shown(value: Any) -> str:
    """A recorded value as text that cannot drive the terminal: what the agent sent is in the trace,
    and an escape sequence there (a window title, the clipboard) must not reach the user's terminal."""
    return str(value).translate(_CONTROL)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def summary(record: dict[str, Any]) -> str:
    stamp = str(record.get("ts", ""))
    clock = stamp[11:23] if len(stamp) >= 23 else stamp
    status = "ERR" if record.get("error") else str(record.get("status_code") or "-")
    line = (f"[{shown(clock)}] {shown(record.get('method', '?'))} {shown(record.get('url', ''))} {shown(status)}"
            f" ({shown(record.get('duration_ms', 0))}ms)")
    extras = []
    if record.get("grant"):
        extras.append(f"grant {shown(record['grant'])}")
    if record.get("blocked"):
        extras.append(f"blocked: {shown(record.get('reason') or 'refused by moat')}")
    if record.get("error"):
        extras.append(f"error: {shown(record['error'])}")
    return line + (f"  [{'; '.join(extras)}]" if extras else "")


def details(record: dict[str, Any]) -> list[str]:
    out = []
    for title, headers_key, body_key in (("Request", "req_headers", "req_body"),
                                         ("Response", "resp_headers", "resp_body")):
        headers = _mapping(record.get(headers_key))
        if headers:
            out.append(f"  {title} Headers:")
            out += [f"    {shown(name)}: {shown(headers[name])}" for name in sorted(headers, key=str)]
        body = record.get(body_key)
        if body:
            text = str(body)
            text = text if len(text) <= BODY_SHOWN else text[:BODY_SHOWN] + "..."
            out += [f"  {title} Body:", *(f"    {shown(line)}" for line in text.splitlines())]
    if record.get("truncated"):
        out.append("  [Body truncated in storage]")
    return [*out, ""]


@click.command()
@click.argument("run", required=False)
@click.option("--network", is_flag=True, help="The requests the run made through moat's proxy.")
@click.option("-v", "--verbose", is_flag=True, help="With headers (injected and secret values redacted).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON array.")
def trace(run: str | None, network: bool, verbose: bool, as_json: bool) -> None:
    """What a run did (default: the most recent run). --network: its HTTP(S) requests."""
    from moat.constants import NETWORK_TRACE
    from moat.errors import UsageError
    from moat.run.registry import Registry
    from moat.run.store import RunStore

    if not network:
        raise UsageError("say what to trace: `moat trace --network [RUN]` lists the run's requests",
                         hint="Exec tracing (the Go tool's default) is not built yet.")
    registry = Registry(RunStore())
    info = registry.resolve(run) if run else registry.latest(active=False)
    records = read_trace(info.directory / NETWORK_TRACE)
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
        return
    if not records:
        click.echo("No network requests recorded")
        return
    for record in records:
        click.echo(summary(record))
        if verbose:
            for line in details(record):
                click.echo(line)
