"""The ``convlens`` command line (see :mod:`convlens.cli.app`)."""

from convlens.cli.app import app, main

__all__ = ["app", "main"]
