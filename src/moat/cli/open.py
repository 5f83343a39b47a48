"""``moat open [RUN] [ENDPOINT] [--print]``: the URL of a run's published endpoint (moat.yaml's ports),
through moat's routing proxy, printed and opened in your browser when there is one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


def _browser_available() -> bool:
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command("open")
@click.argument("run", required=False)
@click.argument("endpoint", required=False)
@click.option("--print", "print_only", is_flag=True, help="Only print the URL (no browser).")
def open_(run: str | None, endpoint: str | None, print_only: bool) -> None:
    """Open RUN's ENDPOINT (default: its only one, else its index); with no RUN, the active run of this
    directory, the only run publishing ports, or the index of all."""
    from moat.errors import UsageError
    from moat.plan.endpoints import routing_port
    from moat.run import router
    from moat.run.registry import Registry
    from moat.run.routes import RouteTable
    from moat.run.store import RunStore, moat_home

    home = moat_home()
    routes = RouteTable(home).routes()
    state = router.running(home)
    port = int(state["port"]) if state else routing_port(os.environ)
    if not routes:
        raise UsageError("no active run publishes ports", hint="Add ports: to moat.yaml (e.g. ports: {web: 3000}).")
    chosen = None
    if run is not None:
        info = Registry(RunStore(home)).resolve(run)
        chosen = next((r for r in routes if r.run_id == info.id), None)
        if chosen is None:
            raise UsageError(f"run {info.id} ({info.name}) publishes no ports (or is not active)")
    else:  # the run in this directory, else the only one
        cwd = str(Path.cwd())
        here = {r.id for r in Registry(RunStore(home)).all() if r.active and r.metadata.get("workspace") == cwd}
        matching = [r for r in routes if r.run_id in here]
        chosen = matching[0] if len(matching) == 1 else routes[0] if len(routes) == 1 else None
    if chosen is None:
        url = f"https://localhost:{port}/"
    elif endpoint is None:
        url = f"https://{chosen.host}.localhost:{port}/"
        if len(chosen.endpoints) == 1:
            url = f"https://{next(iter(chosen.endpoints))}.{chosen.host}.localhost:{port}/"
    elif endpoint in chosen.endpoints:
        url = f"https://{endpoint}.{chosen.host}.localhost:{port}/"
    else:
        known = ", ".join(sorted(chosen.endpoints))
        raise UsageError(f"run {chosen.name} has no endpoint {endpoint!r}; it has {known}")
    click.echo(url)
    if not print_only and _browser_available():
        import webbrowser

        webbrowser.open(url)

