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


@friendly_errors
@with_model_options
def correct(
    audit_dir: Path = typer.Argument(..., help="The folder `convlens audit` wrote (--out)."),
    strategy: int = typer.Option(1, "--strategy", min=1,
                                 help="The strategy's id in the audit (1 = most suspicious)."),
    method: str = typer.Option("pclarc", "--method",
                               help="pclarc: project the strategy's direction out of a layer "
                                    "at inference (no training)."),
    layer: str | None = typer.Option(None, "--layer",
                                     help="Where to project (default: the audit's layer)."),
    shape: str = typer.Option("map", "--shape",
                              help="map: the whole feature map (an artefact in a fixed place); "
                                   "channel: each channel's maximum (an artefact that moves)."),
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
    """Correct the model for one strategy of an audit (P-ClArC: the strategy's direction,
    contrasted with clean images of the same classes, is projected out of a layer) and
    write OUT/ (card.json, projection.safetensors): `--model OUT/` loads it everywhere.
    OUT/guidance.csv lists the images to relabel, remove or augment; OUT/correction.json and
    OUT/report.html the evidence (accuracy, the artefact test, the re-audit in
    OUT/audit-after/). Give the same model options as the audit."""
    from convlens.correction.direction import SHAPES
    from convlens.correction.evidence import gather_evidence
    from convlens.correction.folder import model_source, save_correction
    from convlens.correction.guidance import audit_rows, training_rows, write_guidance
    from convlens.correction.pclarc import METHODS, audit_data, strategy_entry
    from convlens.correction.pclarc import correct as run_correct
    from convlens.correction.report import write_correction_report
    from convlens.files import claim_output

    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if shape not in SHAPES:
        fail(f"--shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    if train is not None and not train.exists():
        fail(f"--train {train} does not exist; give a folder of training images or a CSV")
    if not (audit_dir / "audit.json").is_file():
        fail(f"{audit_dir} holds no audit.json; give the folder `convlens audit` wrote (--out)")
    classifier = model_options.load()
    source = model_source(model_options.model, weights=model_options.weights,
                          trust_model=model_options.trust_model)
    with claim_output(out, overwrite=overwrite, inputs=[audit_dir], what="convlens correct"):
        fixed = run_correct(classifier, audit_dir, strategy, method=method, layer=layer,
                            shape=shape, batch_size=batch_size)
        save_correction(fixed, out, source=source, audit=audit_dir)
        data, _ = audit_data(audit_dir)
        rows = audit_rows(data, strategy_entry(data, strategy))
        if train is not None:
            rows += training_rows(classifier, fixed.direction, train, batch_size=batch_size,
                                  shape=shape)
        write_guidance(out / "guidance.csv", rows)
        evidence = gather_evidence(classifier, fixed.classifier, audit_dir, strategy, out=out,
                                   report=True)
        page = write_correction_report(out)
    classes = ", ".join(f"{k} ({m} of the strategy, {o} others)"
                        for k, (m, o) in fixed.direction.classes.items())
    console.print(f"corrected for strategy {strategy} at {fixed.direction.layer} "
                  f"({method}, {shape}); direction from {classes}: {out}/ "
                  f"(load it with --model {out}); what to relabel, remove or augment: "
                  f"{out / 'guidance.csv'} ({len(rows)} images)", markup=False,
                  highlight=False)
    console.print(f"{evidence_line(evidence)}; the page to decide on: {page}", markup=False,
                  highlight=False)


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
