"""``moat proxy status`` and ``moat proxy stop``: the shared credential proxy of this MOAT_HOME."""

from __future__ import annotations

import json

import click


@click.group()
def proxy() -> None:
    """moat's credential proxy: one daemon per MOAT_HOME, shared by every run with grants. It starts
    when a run needs it and stops by itself a while after the last run ends."""


@proxy.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_(as_json: bool) -> None:
    """Whether the proxy runs, where it listens and which runs it serves (their ids only)."""
    from moat.proxy import client
    from moat.run.store import moat_home

    info = client.status(moat_home())
    if as_json:
        if info is None:
            click.echo(json.dumps({"running": False}))
            return
        click.echo(json.dumps({
            "running": True, "pid": info.pid, "port": info.port, "listeners": info.listeners,
            "proxy_socket": str(info.proxy_socket), "ca_cert": str(info.ca_cert), "runs": list(info.runs),
            "started_at": info.started_at, "idle_seconds": info.idle_seconds, "idle_limit": info.idle_limit,
            "upstream": list(info.upstream),
        }, indent=2))
        return
    if info is None:
        click.echo("moat's proxy is not running.")
        return
    click.echo(f"moat's proxy is running (pid {info.pid}), since {info.started_at}")
    click.echo(f"  Proxy:        {info.host}:{info.port}")
    for host, port in sorted(info.listeners.items()):
        if host != info.host:
            click.echo(f"  Also on:      {host}:{port}")
    click.echo(f"  Unix socket:  {info.proxy_socket}")
    click.echo(f"  CA:           {info.ca_cert}")
    if info.upstream:
        click.echo(f"  Through:      {', '.join(info.upstream)}")
    click.echo(f"  Active runs:  {len(info.runs)}")
    for run_id in info.runs:
        click.echo(f"    - {run_id}")
    if not info.runs and info.idle_limit > 0:
        left = max(0.0, info.idle_limit - info.idle_seconds)
        click.echo(f"  Stops in about {left:.0f} s unless a run starts.")


@proxy.command("stop")
def stop() -> None:
    """Stop the proxy now. Runs using it lose their network access through it (and their grants)."""
    from moat.proxy import client
    from moat.run.store import moat_home

    info = client.stop(moat_home())
    if info is None:
        click.echo("moat's proxy is not running.")
        return
    if info.runs:
        click.echo(f"Stopped moat's proxy (pid {info.pid}); these runs lost it: {', '.join(info.runs)}")
    else:
        click.echo(f"Stopped moat's proxy (pid {info.pid}).")
