"""Asking the user before removing things: "no" is a decision (exit 1), not an interruption (130)."""

from __future__ import annotations

import sys

import click

EXIT_DECLINED = 1


def confirm_or_stop(question: str) -> None:
    """Ask; on "no", say nothing was removed and exit 1. Ctrl-C at the prompt stays 130."""
    if not click.confirm(question, default=False):
        click.echo("Nothing removed.", err=True)
        raise click.exceptions.Exit(EXIT_DECLINED)


def confirm_unless_forced(force: bool, would: str, question: str) -> None:
    """Ask, unless ``force``; with no terminal to ask on, refuse (exit 2) saying what would happen."""
    if force:
        return
    if not sys.stdin.isatty():
        from moat.errors import UsageError

        raise UsageError(f"{would}; add -f to do it without a terminal to confirm on")
    confirm_or_stop(question)
