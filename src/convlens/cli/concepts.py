"""``concepts``: what a layer's channels stand for. ``concepts atlas``: each channel's
reference patches (relevance- and activation-maximisation) and conditional heatmaps."""

from __future__ import annotations

from pathlib import Path

import typer

from convlens.cli._common import (
    ModelOptions,
    console,
    fail,
    friendly_errors,
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

concepts = typer.Typer(help="What a layer's channels stand for: reference patches, atlases.",
                       no_args_is_help=True)


def _channel_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items or not all(item.isdigit() for item in items):
        fail(f"--channels takes channel numbers separated by commas (e.g. 0,5,9); got {text!r}")
    return [int(item) for item in items]


@friendly_errors
@with_model_options
def atlas(
    data: Path = typer.Argument(..., help="A folder of images (plain or ImageFolder) or a CSV."),
    layer: str | None = typer.Option(None, "--layer",
                                     help="Layer whose channels are the concepts (see `layers`); "
                                          "default the last spatial layer."),
    k: int = typer.Option(8, "--k", min=1, max=1000, help="Reference images per channel."),
    channels: str | None = typer.Option(None, "--channels",
                                        help="Channels to show, e.g. 0,5,9 (default: the most "
                                             "relevant, see --top-channels)."),
    top_channels: int = typer.Option(32, "--top-channels", min=1,
                                     help="Show this many channels, the most relevant over the "
                                          "data first."),
    out: Path = typer.Option(Path("convlens-atlas"), "--out", "-o", help="Output folder."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decoding processes."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace results of a different configuration in OUT."),
    engine: str = engine_option(),
    ray_address: str | None = ray_address_option(),
    actors: int | None = actors_option(),
    gpus_per_actor: float | None = gpus_per_actor_option(),
    *, model_options: ModelOptions,
) -> None:
    """Compute a layer's reference sets over DATA in one pass (resumable) and draw
    OUT/atlas.html: per channel its top-k relevance and activation patches and conditional
    heatmaps."""
    from convlens.cli._progress import cli_progress
    from convlens.concepts.atlas import check_channels, layer_channels, write_atlas
    from convlens.concepts.references import reference_sets

    engine, engine_options = engine_settings(engine, ray_address, actors, gpus_per_actor)
    if engine != "local" and workers:
        fail("--workers sets the local engine's decoding processes; with --engine ray, Ray "
             "decodes in its own tasks")
    if channels is not None and top_channels != 32:
        fail("give --channels or --top-channels, not both")
    chosen = _channel_list(channels)
    if not data.exists():
        fail(f"{data} does not exist; give a folder of images or a CSV with path,label")
    classifier = model_options.load()
    name, count = layer_channels(classifier, layer)
    if chosen is not None:
        chosen = check_channels(chosen, name, count)
    with cli_progress() as progress:
        sets = reference_sets(classifier, data, name, k=k, out=out, engine=engine,
                              engine_options=engine_options, batch_size=batch_size,
                              workers=workers, overwrite=overwrite, progress=progress)
        page = write_atlas(sets, out, channels=chosen, top_channels=top_channels,
                           progress=progress)
    console.print(f"reference sets of {sets.channels} channels of {name} over "
                  f"{sets.meta['count']} image(s): {out / 'references.json'}, {page}",
                  markup=False, highlight=False)
    report_problems(sets.meta.get("errors", []))


def register(app: typer.Typer) -> None:
    """Add the ``concepts`` group to the app."""
    concepts.command("atlas")(atlas)
    app.add_typer(concepts, name="concepts")
