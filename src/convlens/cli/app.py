"""The ``convlens`` Typer app: each command group lives in its own module and registers itself.

Importing this module is cheap (Typer and Rich only): commands import torch and the library
when they run, so ``convlens --help`` and ``convlens --version`` answer at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

# Modules under convlens.cli with a ``register(app)`` function, in the order --help lists them.
COMMAND_MODULES = ("models", "explain", "visualize", "demo", "serve")

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
            from convlens import __version__

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
    """Entry point of the ``convlens`` script."""
    app(args=list(argv) if argv is not None else None, prog_name="convlens")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
