"""Answering "no" to a confirmation is a decision (exit 1), not an interruption (130)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from moat.cli.prompt import confirm_or_stop


@click.command()
def remove() -> None:
    confirm_or_stop("Remove these?")
    click.echo("did remove")


def test_no_exits_1_and_removes_nothing() -> None:
    result = CliRunner().invoke(remove, input="n\n")
    assert result.exit_code == 1
    assert "did remove" not in result.output and "Nothing removed." in result.output


def test_yes_goes_on() -> None:
    result = CliRunner().invoke(remove, input="y\n")
    assert result.exit_code == 0 and "did remove" in result.output


def test_an_empty_answer_means_no() -> None:
    assert CliRunner().invoke(remove, input="\n").exit_code == 1
