"""``concepts``: a command group about concepts, what the model sees in terms a person chose.

``concepts tcav`` tests a concept's influence on class decisions (TCAV with random runs and
a t-test, :func:`convlens.concepts.tcav.tcav`); other subcommands join the same group.
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
    with_model_options,
)

concepts_app = typer.Typer(
    help="Concepts: what the model sees (TCAV; reference sets).",
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

    from convlens.concepts.tcav import format_p
    from convlens.concepts.tcav import tcav as run_tcav

    if out is not None and out.is_dir():
        fail(f"--out {out} is a folder; pass a file name such as tcav.json")
    layers = [name.strip() for name in layer.split(",") if name.strip()] if layer else None
    if layer is not None and not layers:
        fail("--layer needs a layer name (see `convlens layers`)")
    classifier = model_options.load()
    result = run_tcav(classifier, concept, layers, classes, images=images, random=random,
                      runs=runs, cav=cav, alpha=alpha, seed=seed, batch_size=batch_size)
    table = Table("class", "layer", "cav", "score", "random score", "p-value", "significant")
    for row in result.rows:
        table.add_row(row["class"], row["layer"], row["cav"],
                      f"{row['score']:.3f} ± {row['score_std']:.3f}",
                      f"{row['random_score']:.3f} ± {row['random_score_std']:.3f}",
                      format_p(row["p_value"]), "yes" if row["significant"] else "no")
    console.print(table)
    console.print(result.verdict(), markup=False, highlight=False)
    if out is not None:
        console.print(f"wrote {result.save(out)}", markup=False, highlight=False)


concepts_app.command("tcav")(tcav)


def register(app: typer.Typer) -> None:
    """Add the ``concepts`` group to the app."""
    app.add_typer(concepts_app, name="concepts")
