"""The ``convlens`` Typer app: each command group lives in its own module and registers itself.

Importing this module is cheap (Typer and Rich only): commands import torch and the library
when they run, so ``convlens --help`` and ``convlens --version`` answer at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from convlens import __version__
from convlens.cli._common import EXIT_ERROR, error_line

# Modules under convlens.cli with a ``register(app)`` function, in the order --help lists them.
COMMAND_MODULES = ("models", "explain", "audit", "concepts", "correct", "evaluate", "visualize",
                   "demo", "serve")

app = typer.Typer(
    name="convlens",
    help="See why a convolutional image classifier decides what it decides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"convlens {version('convlens')}")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            typer.echo(f"convlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """See why a convolutional image classifier decides what it decides."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"convlens.cli.{_name}").register(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``convlens`` script: run a command, exit with its code.

    Click's usage errors (unknown option, bad value, missing argument) become one
    ``error: ...`` line naming the command's ``--help``, with exit code 2, like our own
    errors, instead of Typer's framed panel (which carries colour codes wherever
    FORCE_COLOR is set, a pipe included).
    """
    try:  # Typer vendors its own copy of Click (typer._click) since 0.2x
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover - older Typer on top of Click
        from click import exceptions as click

    command = typer.main.get_command(app)
    try:
        code = command.main(args=list(argv) if argv is not None else None,
                            prog_name="convlens", standalone_mode=False)
    except click.NoArgsIsHelpError as error:
        typer.echo(error.ctx.get_help() if error.ctx else error.format_message())
        code = EXIT_ERROR
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else "convlens"
        error_line(f"{error.format_message().rstrip('.')}; see '{where} --help'")
        code = EXIT_ERROR
    except click.ClickException as error:
        error_line(error.format_message())
        code = error.exit_code
    except typer.Abort:
        error_line("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
