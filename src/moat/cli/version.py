"""``moat version``: as the Go tool prints it (``moat --version`` says the same)."""

from __future__ import annotations

import click

from moat import __version__


@click.command()
def version() -> None:
    """Print the version of moat."""
    click.echo(f"moat {__version__}")
