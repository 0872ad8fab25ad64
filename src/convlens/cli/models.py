"""``predict``, ``layers`` and ``methods``: what a model says, its layers, what can explain it."""

from __future__ import annotations

from pathlib import Path

import typer

import convlens
from convlens.cli._common import (
    ModelOptions,
    check_max_pixels,
    console,
    friendly_errors,
    max_pixels_option,
    problem_record,
    report_problems,
    with_model_options,
)
from convlens.errors import ImageError


@friendly_errors
@with_model_options
def predict(
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes per image."),
    max_pixels: int | None = max_pixels_option(),
    *, model_options: ModelOptions,
) -> None:
    """Print the top classes of each image."""
    from rich.table import Table

    from convlens.io.images import expand_inputs  # lazy: --help start-up (Pillow)

    check_max_pixels(max_pixels)
    files, problems = expand_inputs(images)
    classifier = model_options.load()
    table = Table("image", "rank", "class", "probability")
    for path in files:
        try:
            x = classifier.preprocessing.load_file(path, max_pixels=max_pixels)[0]
        except ImageError as error:
            problems.append(problem_record(path, error))
            continue
        x = x[None].to(classifier.device)
        for rank, (label, probability) in enumerate(classifier.predict(x, top=top)[0], 1):
            table.add_row(str(path) if rank == 1 else "", str(rank), label, f"{probability:.4f}")
    if files:
        console.print(table)
    report_problems(problems)


@friendly_errors
@with_model_options
def layers(*, model_options: ModelOptions) -> None:
    """List every layer's name, type and output shape, to choose --layer."""
    from rich.table import Table

    classifier = model_options.load()
    default = classifier.default_layer()
    table = Table("layer", "type", "output shape", "parameters")
    for info in convlens.layers(classifier):
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        name = f"{info.name} (default)" if info.name == default else info.name
        table.add_row(name, info.type, shape, f"{info.parameters:,}")
    console.print(table)


@friendly_errors
def list_methods() -> None:
    """List every attribution method with its family, options (and defaults) and paper.

    Options are passed to ``explain`` as ``--option METHOD.NAME=VALUE`` (see
    :func:`convlens.cli._common.parse_method_options`).
    """
    from rich.table import Table

    from convlens.attribution.core import methods  # lazy: --help start-up (torch)

    table = Table("method", "family", "output", "options", "reference",
                  caption="pass options with --option METHOD.NAME=VALUE (e.g. --option "
                          "integrated_gradients.steps=64), or NAME=VALUE for every method "
                          "that has it")
    for method in methods():
        options = ", ".join(f"{k}={v!r}" for k, v in method.options.items()) or "-"
        table.add_row(method.name, method.family, method.space, options, method.reference)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``predict``, ``layers`` and ``methods`` to the app."""
    app.command("predict")(predict)
    app.command("layers")(layers)
    app.command("methods")(list_methods)
