"""``correct``: take a strategy the audit found out of the model, and write the corrected
model as a folder that every command loads (``--model FIXED/``)."""

from __future__ import annotations

from pathlib import Path

import typer

from convlens.cli._common import (
    ModelOptions,
    console,
    fail,
    friendly_errors,
    with_model_options,
)
from convlens.cli._progress import cli_progress


@friendly_errors
@with_model_options
def correct(
    audit_dir: Path = typer.Argument(..., help="The folder `convlens audit` wrote (--out)."),
    strategy: int = typer.Option(1, "--strategy", min=1,
                                 help="The strategy's id in the audit (1 = most suspicious)."),
    method: str = typer.Option("pclarc", "--method",
                               help="pclarc: project the strategy's direction out of a layer "
                                    "at inference (no training); rrclarc: fine-tune the layers "
                                    "above it so the output's gradient along it vanishes; "
                                    "last-layer: refit the head on group-balanced features."),
    layer: str | None = typer.Option(None, "--layer",
                                     help="Where to project (default: the audit's layer)."),
    shape: str = typer.Option("map", "--shape",
                              help="map: the whole feature map (an artefact in a fixed place); "
                                   "channel: each channel's maximum (an artefact that moves)."),
    data: Path | None = typer.Option(
        None, "--data", help="Labelled training images (ImageFolder or CSV) for rrclarc and "
                             "last-layer (default: the audit's images)."),
    epochs: int = typer.Option(10, "--epochs", min=1, help="rrclarc: epochs of fine-tuning."),
    strength: float = typer.Option(10.0, "--strength", min=0.0,
                                   help="rrclarc: the penalty's weight, relative to the "
                                        "cross-entropy on the first batch."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", min=0.0,
                                        help="rrclarc: Adam's learning rate."),
    scope: str = typer.Option("linear", "--scope",
                              help="rrclarc: what trains above the layer: linear (the linear "
                                   "layers) or above (linear and convolution layers)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the training and the evidence."),
    train: Path | None = typer.Option(
        None, "--train", help="Training folder (ImageFolder, CSV or plain): its images "
                              "furthest along the strategy's direction join guidance.csv."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per batch."),
    out: Path = typer.Option(Path("convlens-fixed"), "--out", "-o",
                             help="The corrected model's folder."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace a corrected model convlens wrote in OUT."),
    *, model_options: ModelOptions,
) -> None:
    """Correct the model for one strategy of an audit and write OUT/ (card.json,
    projection.safetensors, weights.safetensors for the training methods): `--model OUT/`
    loads it everywhere. The strategy's direction (its images contrasted with clean images
    of the same classes) is projected out (pclarc), made irrelevant by a fine-tune
    (rrclarc), or balanced away by refitting the head (last-layer). OUT/correction.json
    and OUT/report.html hold the evidence (accuracy, artefact test, the re-audit in
    OUT/audit-after/), OUT/guidance.csv the images to relabel, remove or augment. A killed
    rrclarc run resumes when run again with the same options (--overwrite starts again).
    Give the same model options as the audit."""
    # lazy: --help start-up (torch)
    from convlens.correction.pipeline import METHODS, SCOPES, SHAPES, correct_to_folder

    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if shape not in SHAPES:
        fail(f"--shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    if data is not None and method == "pclarc":
        fail("--data trains a correction; pclarc trains nothing (use --method rrclarc or "
             "last-layer, or leave --data out)")
    if data is not None and not data.exists():
        fail(f"--data {data} does not exist; give a folder of labelled images or a CSV")
    if train is not None and not train.exists():
        fail(f"--train {train} does not exist; give a folder of training images or a CSV")
    if not (audit_dir / "audit.json").is_file():
        fail(f"{audit_dir} holds no audit.json; give the folder `convlens audit` wrote (--out)")
    classifier = model_options.load()
    source = {"model": model_options.model, "weights": model_options.weights,
              "trust_model": model_options.trust_model}
    with cli_progress() as progress:
        written = correct_to_folder(
            classifier, audit_dir, strategy, out, source=source, method=method, layer=layer,
            shape=shape, data=data, epochs=epochs, strength=strength,
            learning_rate=learning_rate, scope=scope, seed=seed, batch_size=batch_size,
            train=train, overwrite=overwrite, progress=progress)
    fixed = written.correction
    classes = ", ".join(f"{k} ({m} of the strategy, {o} others)"
                        for k, (m, o) in fixed.direction.classes.items())
    for note in fixed.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    trained = ("" if fixed.data is None else
               f"; trained on {fixed.data['images']} images of {fixed.data['source']}")
    console.print(f"corrected for strategy {strategy} at {fixed.direction.layer} "
                  f"({method}, {shape}{trained}); direction from {classes}: {out}/ "
                  f"(load it with --model {out}); what to relabel, remove or augment: "
                  f"{written.guidance} ({written.guidance_rows} images)", markup=False,
                  highlight=False)
    console.print(f"{evidence_line(written.evidence)}; the page to decide on: {written.page}",
                  markup=False, highlight=False)


def evidence_line(evidence: dict) -> str:
    """One line of the evidence in correction.json: accuracy, the artefact test, the re-audit."""
    accuracy = evidence.get("accuracy", {})
    overall = accuracy.get("overall", accuracy)
    before, after = overall.get("before"), overall.get("after")
    still = (evidence.get("reaudit") or {}).get("still_exists")
    bits = []
    if before is not None and after is not None:
        bits.append(f"accuracy {before:.3f} -> {after:.3f}")
    if still is not None:
        bits.append("the strategy is " + ("still found" if still else "gone") + " in the re-audit")
    return "evidence (correction.json): " + ("; ".join(bits) if bits else "written")


def register(app: typer.Typer) -> None:
    """Add ``correct`` to the app."""
    app.command("correct")(correct)
