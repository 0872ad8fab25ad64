"""The ``convlens`` command line (see :mod:`convlens.cli.app`).

A command is thin: it parses its options (flag-named checks, one ``error: ...`` line each),
calls one library function that does the work, and prints what came back; building jobs,
loading models and composing results live in the library (docs/architecture.md, "Layers
and the direction data flows").

Why commands import the library inside their function (``# lazy: --help start-up``):
``convlens --help`` and ``convlens --version`` import every command module, and they must
answer without importing torch, numpy or Pillow (tests/cli/test_options.py checks it). So a
module under ``cli/`` imports at its top only what is cheap (Typer, Rich, ``convlens.errors``,
``convlens.files``, ``convlens.progress``, the other ``cli`` modules), and each command
imports the library calls it makes when it runs. ``convlens.app`` (the server) is imported
only by ``convlens serve``, when it runs, and imports everything at its top.
"""

from convlens.cli.app import app, main

__all__ = ["app", "main"]
