"""``demo``: the bundled model on the sample photos, as one self-contained page."""

from __future__ import annotations

from pathlib import Path

import typer

from convlens.cli._common import console, friendly_errors, parse_methods


@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder."),
    method: str = typer.Option("all", "--method", help="Methods to show (default: all)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    features: bool = typer.Option(True, "--features/--no-features",
                                  help="Include the feature visualization section."),
) -> None:
    """Predict and explain the sample photos with every method; write DIR/index.html."""
    from convlens.report import build_demo

    page = build_demo(out, methods=parse_methods(method), device=device, features=features)
    console.print(f"demo page: {page}")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the app."""
    app.command("demo")(demo)
