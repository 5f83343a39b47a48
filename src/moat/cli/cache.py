"""``moat cache list`` and ``moat cache clean``: the host cache of provisioned items (ollama models)
and the services' warm templates (initialised data directories, see services/warm.py)."""

from __future__ import annotations

import json
import os

import click

from moat.cli.table import echo_table


@click.group()
def cache() -> None:
    """The host cache shared by all runs: provisioned items (e.g. ollama models) and warm templates."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json: bool) -> None:
    """Every cached item and warm template: service, item, size and when it was last used."""
    from moat.cache import HostCache
    from moat.cache.admin import list_entries
    from moat.cache.warm import WarmCache
    from moat.catalog import load_catalog
    from moat.plan.warm import warm_root
    from moat.run.report import human_bytes
    from moat.run.store import moat_home

    entries = [{**e.to_dict(), "kind": "item"} for e in list_entries(HostCache(moat_home()), load_catalog())]
    warm = WarmCache(warm_root(moat_home(), os.environ))
    entries += [{"service": t.service, "item": f"warm template {t.key}", "size_bytes": t.size(),
                 "last_used": warm.last_used(t), "pulled_at": t.created_at, "kind": "warm-template"}
                for t in warm.templates()]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("The cache is empty.")
        return
    rows = [("SERVICE", "ITEM", "SIZE", "LAST USED")]
    rows += [(e["service"], e["item"], human_bytes(e["size_bytes"]), e["last_used"] or "-") for e in entries]
    echo_table(rows)


@cache.command("clean")
@click.argument("service", required=False)
@click.option("--item", "items", multiple=True, metavar="NAME", help="Remove only this item (repeatable).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def clean(service: str | None, items: tuple[str, ...], force: bool) -> None:
    """Remove cached items and warm templates: everything, one SERVICE's, or single --item NAMEs."""
    from moat.cache import HostCache
    from moat.cache.admin import cached_services, plan_removal, remove
    from moat.cache.warm import WarmCache
    from moat.catalog import load_catalog
    from moat.cli.prompt import confirm_unless_forced
    from moat.errors import UsageError
    from moat.plan.warm import warm_root
    from moat.run.report import human_bytes
    from moat.run.store import moat_home
    from moat.runtime.privileged import remove_as_root

    catalog = load_catalog()
    host_cache = HostCache(moat_home())
    if items and not service:
        raise UsageError("--item needs a SERVICE, e.g. `moat cache clean ollama --item llama3.2`")
    warm = WarmCache(warm_root(moat_home(), os.environ))
    entry = catalog.service(service) if service else None
    warm_only = entry is not None and entry.provisions is None and entry.warm is not None and not items
    services = ([] if warm_only else [service]) if service else cached_services(host_cache, catalog)
    removals = [plan_removal(host_cache, catalog, name, list(items)) for name in services]
    removals = [r for r in removals if r.paths]
    templates = [] if items else warm.templates(service)
    if not removals and not templates:
        click.echo("Nothing to remove.")
        return
    summary = "; ".join(
        [f"{r.service}: {', '.join(r.items) if r.items else 'everything'} ({human_bytes(r.size)})" for r in removals]
        + ([f"{len(templates)} warm template(s) ({human_bytes(sum(t.size() for t in templates))})"]
           if templates else []))
    confirm_unless_forced(force, f"would remove {summary}", f"Remove {summary}?")
    for removal in removals:
        remove(host_cache, removal, lambda paths, root: remove_as_root(paths, root, moat_home()))
        click.echo(f"removed {removal.service}: {', '.join(removal.items) if removal.items else 'everything'}"
                   f" ({human_bytes(removal.size)})")
    if templates:
        size, busy = warm.remove(service)
        click.echo(f"removed warm templates ({human_bytes(size)})")
        if busy:
            click.echo(f"kept {len(busy)} warm template(s) a running run is starting from: {', '.join(busy)};"
                       " run `moat cache clean` again once it has started")
