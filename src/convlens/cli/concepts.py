"""``concepts``: a command group about concepts, what the model sees.

``concepts tcav`` tests a concept's influence on class decisions (TCAV with random runs and
a t-test, :func:`convlens.concepts.tcav.tcav`); ``concepts atlas`` shows what a layer's
channels stand for: their reference patches (relevance and activation maximisation) and
conditional heatmaps (:func:`convlens.concepts.references.reference_sets`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from convlens.cli._common import (
    ModelOptions,
    console,
    fail,
    finite,
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
from convlens.cli._progress import cli_progress

concepts_app = typer.Typer(
    help="Concepts: what the model sees (TCAV; reference sets and the concept atlas).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@friendly_errors
@with_model_options
def tcav(
    concept: Path = typer.Argument(..., help="Folder of the concept's example images "
                                             "(at least 2; 10 to 50 are typical)."),
    images: Path = typer.Argument(..., help="The images whose decisions are tested: an "
                                            "ImageFolder tree or CSV (each class uses its own "
                                            "images) or a folder (every class uses all)."),
    random: Path | None = typer.Option(
        None, "--random", help="Folder of random counterexamples (default: IMAGES without "
                               "the concept's files); each run draws two disjoint sets of "
                               "the concept's size from it."),
    layer: str | None = typer.Option(None, "--layer",
                                     help="Layer(s), comma-separated (default: the model's "
                                          "default layer; see `layers`)."),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated class names or indices (default: the "
                                "labels in IMAGES, else the most frequent predictions)."),
    runs: int = typer.Option(10, "--runs", min=2, help="Random runs (at least 10 advised)."),
    cav: str = typer.Option("both", "--cav", help="linear (logistic regression), fastcav "
                                                  "(mean difference) or both."),
    alpha: float = typer.Option(0.05, "--alpha", callback=finite, min=0.0, max=1.0,
                                help="Significance level, Bonferroni-corrected over "
                                     "classes x layers."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draws."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the result as JSON."),
    *, model_options: ModelOptions,
) -> None:
    """TCAV (Kim et al. 2018): does a concept push the model's decision for a class?

    The concept's CAV is the direction from random images to the concept's images in a
    layer's activations. A class's TCAV score is the fraction of its images whose logit
    rises when that activation moves towards the concept (1: always, 0: never). Over
    --runs random counterexample sets the scores are compared with those of random CAVs
    (random images against random images) by a two-sided t-test: p is the probability of
    scores this far from the random ones if the concept were no more than a random
    direction, so a small p (below --alpha over the number of classes x layers) means
    the concept matters for that class, towards it (score near 1) or away (near 0).
    """
    from rich.table import Table

    from convlens.concepts import tcav as concept_tcav  # lazy: --help start-up (torch)

    if out is not None and out.is_dir():
        fail(f"--out {out} is a folder; pass a file name such as tcav.json")
    layers = [name.strip() for name in layer.split(",") if name.strip()] if layer else None
    if layer is not None and not layers:
        fail("--layer needs a layer name (see `convlens layers`)")
    classifier = model_options.load()
    with cli_progress() as progress:
        result = concept_tcav.tcav(classifier, concept, layers, classes, images=images,
                                   random=random, runs=runs, cav=cav, alpha=alpha, seed=seed,
                                   batch_size=batch_size, progress=progress)
    table = Table("class", "layer", "cav", "score", "random score", "p-value", "significant")
    for row in result.rows:
        table.add_row(row["class"], row["layer"], row["cav"],
                      f"{row['score']:.3f} ± {row['score_std']:.3f}",
                      f"{row['random_score']:.3f} ± {row['random_score_std']:.3f}",
                      concept_tcav.format_p(row["p_value"]),
                      "yes" if row["significant"] else "no")
    console.print(table)
    console.print(result.verdict(), markup=False, highlight=False)
    if out is not None:
        console.print(f"wrote {result.save(out)}", markup=False, highlight=False)


concepts_app.command("tcav")(tcav)


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
    top_channels: int = typer.Option(8, "--top-channels", min=1,
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
    """The concept atlas: what each channel of a layer stands for.

    Computes the layer's reference sets over DATA in one resumable pass (each channel's
    top-k images by relevance and by activation) and draws OUT/atlas.html: per channel its
    relevance and activation patches and conditional heatmaps (CRP)."""
    from convlens.concepts.atlas import build_atlas  # lazy: --help start-up (torch)

    engine, engine_options = engine_settings(engine, ray_address, actors, gpus_per_actor)
    if engine != "local" and workers:
        fail("--workers sets the local engine's decoding processes; with --engine ray, Ray "
             "decodes in its own tasks")
    if channels is not None and top_channels != 8:
        fail("give --channels or --top-channels, not both")
    chosen = _channel_list(channels)
    if not data.exists():
        fail(f"{data} does not exist; give a folder of images or a CSV with path,label")
    classifier = model_options.load()
    with cli_progress() as progress:
        sets, page = build_atlas(classifier, data, layer, k=k, out=out, channels=chosen,
                                 top_channels=top_channels, engine=engine,
                                 engine_options=engine_options, batch_size=batch_size,
                                 workers=workers, overwrite=overwrite, progress=progress)
    console.print(f"reference sets of {sets.channels} channels of {sets.layer} over "
                  f"{sets.meta['count']} image(s): {out / 'references.json'}, {page}",
                  markup=False, highlight=False)
    report_problems(sets.meta.get("errors", []))


concepts_app.command("atlas")(atlas)


def register(app: typer.Typer) -> None:
    """Add the ``concepts`` group to the app."""
    app.add_typer(concepts_app, name="concepts")
