"""``explain``: heatmaps for image files and folders, written to disk batch by batch.

The work is :class:`convlens.jobs.explain_job.ExplainJob`: resumable (the same command run
again skips finished photos), never reading its own output folder, every file written
atomically. Progress is drawn by :mod:`convlens.cli._progress`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from convlens.cli._common import (
    ModelOptions,
    check_max_pixels,
    console,
    fail,
    friendly_errors,
    max_pixels_option,
    parse_method_options,
    parse_methods,
    report_problems,
    with_model_options,
)
from convlens.cli._engine import (
    actors_option,
    engine_option,
    engine_settings,
    gpus_per_actor_option,
    ray_address_option,
)
from convlens.cli._progress import cli_progress
from convlens.files import check_output


@friendly_errors
@with_model_options
def explain(
    images: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    method: str = typer.Option("gradcam,saliency", "--method",
                               help="Comma-separated method names, or 'all' (see `methods`)."),
    target: str = typer.Option("pred", "--target",
                               help="pred, a class INDEX, a class NAME, or top:K."),
    layer: str | None = typer.Option(None, "--layer", help="Layer for CAMs (see `layers`)."),
    out: Path = typer.Option(Path("convlens-out"), "--out", "-o",
                             help="Output folder (never read as input)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1,
                                   help="Images per batch (results do not depend on it)."),
    normalize: str = typer.Option(
        "image", "--normalize",
        help="image: each map to its own peak; batch: one scale per method over the whole run."),
    option: list[str] = typer.Option(
        [], "--option", help="Method option METHOD.NAME=VALUE, e.g. integrated_gradients."
                             "steps=25 (repeatable; see `methods` for names)."),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="Processes decoding images (0: in this process)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace results of another configuration in --out."),
    grid: bool = typer.Option(True, "--grid/--no-grid",
                              help="Also draw a titled grid per image (slow on a CPU)."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume",
        help="Skip photos finished by an earlier run of the same command (default); "
             "--no-resume recomputes everything (same as --overwrite)."),
    max_pixels: int | None = max_pixels_option(),
    engine: str = engine_option(),
    ray_address: str | None = ray_address_option(),
    actors: int | None = actors_option(),
    gpus_per_actor: float | None = gpus_per_actor_option(),
    *, model_options: ModelOptions,
) -> None:
    """Write heatmaps (one PNG per method), a grid per image, results.json and index.html."""
    # lazy: --help start-up (torch)
    from convlens.explanations import parse_target
    from convlens.jobs.explain_job import ExplainJob

    engine, engine_options = engine_settings(engine, ray_address, actors, gpus_per_actor)
    if engine != "local" and workers:
        fail("--workers sets the local engine's decoding processes; with --engine ray, Ray "
             "decodes in its own tasks")
    if normalize not in ("image", "batch"):
        fail(f"--normalize must be 'image' or 'batch', got {normalize!r}")
    check_max_pixels(max_pixels)
    method_names = parse_methods(method)
    options = parse_method_options(option, method_names)
    parse_target(target)  # validates top:K
    target_value = int(target) if target.strip().lstrip("-").isdigit() else target
    check_output(out, inputs=images)  # a file in the way fails before the model loads
    classifier = model_options.load()
    job = ExplainJob(classifier, method_names, out, target=target_value, layer=layer,
                     normalize=normalize, batch_size=batch_size, workers=workers,
                     options=options, overwrite=overwrite or not resume, grids=grid,
                     max_pixels=max_pixels, engine=engine, engine_options=engine_options)
    with cli_progress() as progress:
        outcome = job.run(images, progress=progress)
    skipped = f", {outcome.skipped} image(s) already done" if outcome.skipped else ""
    page = f", {outcome.page.name}" if outcome.page else ""
    console.print(f"wrote {outcome.new} explanation(s) to {out}/{skipped} "
                  f"(results.json{page}: {outcome.records} in all)")
    report_problems(outcome.problems)


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the app."""
    app.command("explain")(explain)
