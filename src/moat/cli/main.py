"""The ``moat`` command: a click group whose subcommands load lazily, and the one place where
errors become output and exit codes."""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

import click

from moat import __version__
from moat.errors import EXIT_RUNTIME, MoatError
from moat.masking import scrub

# name → (module:attribute, one-line help). Importing a command only when it runs keeps
# `moat --help` and `moat deps list` from paying for pydantic, docker or rich.
_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("moat.cli.run:run", "Run a command in an isolated container with its services."),
    "claude": ("moat.cli.agents:claude", "Run Claude Code in an isolated container (its credential via the proxy)."),
    "codex": ("moat.cli.agents:codex", "Run OpenAI Codex in an isolated container (its credential via the proxy)."),
    "gemini": ("moat.cli.agents:gemini", "Run Gemini CLI in an isolated container (its credential via the proxy)."),
    "copilot": ("moat.cli.agents:copilot", "Run GitHub Copilot CLI in an isolated container (token via the proxy)."),
    "pi": ("moat.cli.agents:pi", "Run the pi coding agent in an isolated container (its key via the proxy)."),
    "open": ("moat.cli.open:open_", "Print (and open in your browser) a run's published endpoint's URL."),
    "snapshot": ("moat.cli.snapshot:snapshot", "Take, list, prune and restore a run's workspace snapshots."),
    "wt": ("moat.cli.worktree:wt", "Run in a git worktree of a branch (made from HEAD when new); list, clean them."),
    "exec": ("moat.cli.enter:exec_", "Run a command in a running run's agent container (moat exec RUN -- CMD)."),
    "join": ("moat.cli.enter:join", "Start the run's agent once more in its running container (moat join RUN)."),
    "deps": ("moat.cli.deps:deps", "List and describe the dependencies moat.yaml can declare."),
    "cache": ("moat.cli.cache:cache", "List and clean the host cache: provisioned items, warm service templates."),
    "volumes": ("moat.cli.volumes:volumes", "List and remove the volumes runs keep across runs (per run name)."),
    "list": ("moat.cli.runs:list_runs", "List runs, newest first (--all includes finished ones)."),
    "logs": ("moat.cli.runs:logs", "Show a run's output; -f follows a live run."),
    "stop": ("moat.cli.runs:stop", "Stop runs (default: the most recent active run)."),
    "destroy": ("moat.cli.runs:destroy", "Remove finished runs' records."),
    "clean": ("moat.cli.maintenance:clean", "Remove orphaned containers, networks, volumes and unused images."),
    "status": ("moat.cli.maintenance:status", "Show the engine, active runs, disk use and orphans."),
    "grant": ("moat.cli.grant:grant", "Store credentials (encrypted) for the proxy to inject; list, show them."),
    "revoke": ("moat.cli.grant:revoke", "Remove a stored credential."),
    "trace": ("moat.cli.trace:trace", "Show what a run did: --network lists its requests through the proxy."),
    "proxy": ("moat.cli.proxy:proxy", "Show or stop moat's credential proxy (shared by the runs with grants)."),
    "system": ("moat.cli.system:system", "Moat's images and containers on every runtime; leftover temp directories."),
    "version": ("moat.cli.version:version", "Print the version of moat."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attribute = _COMMANDS[cmd_name][0].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attribute)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][1]) for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="moat")
@click.option("-v", "--verbose", is_flag=True, help="Show more detail, and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """moat runs an agent (or any command) in an isolated container against one workspace, with
    the services its moat.yaml declares started, ready and described to it."""
    ctx.obj = {"verbose": verbose}


def _verbose(argv: list[str]) -> bool:
    """Whether -v was given (before any '--', after which words belong to the agent's command)."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "-v" in head or "--verbose" in head


def _traceback() -> None:
    sys.stderr.write(scrub(traceback.format_exc()))


def main(argv: list[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = _verbose(args)
    try:
        result = cli.main(args=args, prog_name="moat", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except MoatError as exc:
        if verbose:
            _traceback()
        # Every error passes the masks of the runs this process executed: a message built from a
        # service's output or a user's value never shows a password.
        click.echo(f"moat: {scrub(exc.render())}", err=True)
        return exc.exit_code
    except Exception as exc:
        if verbose:
            _traceback()
        click.echo(
            f"moat: internal error: {type(exc).__name__}: {scrub(str(exc))}\n"
            "This is a bug in moat. Run again with -v for the traceback and please report it.",
            err=True,
        )
        return EXIT_RUNTIME
    # A command's int result is the process exit code (``moat run`` returns the agent's).
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
