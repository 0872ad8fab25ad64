"""``explain``: heatmaps for image files and folders, written to disk batch by batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from convlens.cli._common import (
    ModelOptions,
    console,
    fail,
    friendly_errors,
    parse_methods,
    report_problems,
    with_model_options,
)


def _parse_target(text: str) -> Any:
    from convlens.explain import parse_target

    parse_target(text)  # validates top:K
    return int(text) if text.strip().lstrip("-").isdigit() else text


@friendly_errors
@with_model_options
def explain(
    images: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    method: str = typer.Option("gradcam,saliency", "--method",
                               help="Comma-separated method names, or 'all' (see `methods`)."),
    target: str = typer.Option("pred", "--target",
                               help="pred, a class INDEX, a class NAME, or top:K."),
    layer: str | None = typer.Option(None, "--layer", help="Layer for CAMs (see `layers`)."),
    out: Path = typer.Option(Path("convlens-out"), "--out", "-o", help="Output folder."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch."),
    normalize: str = typer.Option("image", "--normalize",
                                  help="image: each map to its own peak; batch: shared scale."),
    *, model_options: ModelOptions,
) -> None:
    """Write heatmaps (one PNG per method), a grid per image and results.json."""
    from convlens.report import ExplainJob

    if normalize not in ("image", "batch"):
        fail(f"--normalize must be 'image' or 'batch', got {normalize!r}")
    method_names = parse_methods(method)
    target_value = _parse_target(target)
    classifier = model_options.load()
    job = ExplainJob(classifier, method_names, out, target=target_value, layer=layer,
                     normalize=normalize, batch_size=batch_size)
    problems = job.run(images, progress=True)
    console.print(f"wrote {len(job.records)} explanation(s) to {out}/ (results.json)")
    report_problems(problems)


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the app."""
    app.command("explain")(explain)
