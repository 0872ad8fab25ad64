"""``audit``: predictions, strategies (across classes and per class) and suspicious clusters
over a whole dataset."""

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
from convlens.cli._progress import cli_progress
from convlens.cli.evaluate import parse_options


@friendly_errors
@with_model_options
def audit(
    data: Path = typer.Argument(..., help="ImageFolder tree, CSV with path,label, or a folder "
                                          "of images."),
    method: str = typer.Option("gradcam", "--method", help="Attribution method (see `methods`)."),
    layer: str | None = typer.Option(None, "--layer", help="Layer for CAMs (see `layers`)."),
    group_by: str = typer.Option("predicted", "--group-by",
                                 help="predicted (the model's decisions) or label."),
    out: Path = typer.Option(Path("convlens-audit"), "--out", "-o", help="Output folder."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decoding processes."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace results of a different configuration in OUT."),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Comma-separated maps-based metrics, NAME or NAME:PRESET (see "
                                "`metrics`), scored per image on the predicted class's map."),
    metric_option: list[str] = typer.Option([], "--metric-option",
                                            help="Metric option METRIC.NAME=VALUE (repeatable)."),
    neighbours: str = typer.Option("exact", "--neighbours",
                                   help="SpRAy's neighbour search: exact, or nndescent "
                                        "(approximate; pip install 'convlens\\[scale]')."),
    max_cluster_maps: int = typer.Option(
        50_000, "--max-cluster-maps", min=0,  # = auditing.run.MAX_CLUSTER_MAPS (tested)
        help="Cluster at most this many maps per group (a seeded sample; the rest join their "
             "nearest sampled maps' cluster); 0: every map."),
    concepts: bool = typer.Option(
        False, "--concepts",
        help="Record every image's channel relevances (concepts, CRP) at the CAM layer (the "
             "model's default layer for other methods) in the same pass: each strategy then "
             "names the channels it rests on, with reference images."),
    concept_layer: str | None = typer.Option(
        None, "--concept-layer",
        help="The layer whose channels are the concepts (implies --concepts; see `layers`)."),
    engine: str = engine_option(),
    ray_address: str | None = ray_address_option(),
    actors: int | None = actors_option(),
    gpus_per_actor: float | None = gpus_per_actor_option(),
    *, model_options: ModelOptions,
) -> None:
    """Audit a dataset: find the strategies the model relies on (across classes: what its
    mistakes share; per class: SpRAy clusters), check the top ones causally, and write
    OUT/audit.json and OUT/report.html; resumes an interrupted run."""
    # lazy: --help start-up (torch)
    from convlens.auditing import run as auditing
    from convlens.auditing.request import check_request

    engine, engine_options = engine_settings(engine, ray_address, actors, gpus_per_actor)
    if 0 < max_cluster_maps < 100:
        fail(f"--max-cluster-maps must be 0 (cluster every map) or at least 100; got "
             f"{max_cluster_maps}")
    if engine != "local" and workers:
        fail("--workers sets the local engine's decoding processes; with --engine ray, Ray "
             "decodes in its own tasks")
    if group_by not in auditing.GROUP_BY:
        fail(f"--group-by must be one of {', '.join(auditing.GROUP_BY)}; got {group_by!r}")
    if "," in method:
        fail("audit takes one --method (e.g. gradcam)")
    metric_keys = [k.strip() for k in (metrics or "").split(",") if k.strip()]
    if metrics is not None and not metric_keys:
        fail("--metrics needs at least one metric name (see `convlens metrics`)")
    metric_options = parse_options(metric_option, "--metric-option", metric_keys,
                                   listed_by="--metrics")
    check_request(data, method=method, group_by=group_by, metrics=metric_keys,
                  metric_options=metric_options)  # refuse bad input before loading
    classifier = model_options.load()
    with cli_progress() as progress:
        result = auditing.audit(
            classifier, data, method=method, layer=layer, group_by=group_by, out=out,
            batch_size=batch_size, workers=workers, overwrite=overwrite, progress=progress,
            metrics=metric_keys, metric_options=metric_options, engine=engine,
            engine_options=engine_options, neighbours=neighbours,
            max_cluster_maps=max_cluster_maps or None,
            concepts=concept_layer if concept_layer else (True if concepts else None))
        report = result.report(progress=progress)
    strategies = result.data.get("strategies") or []
    console.print(f"audited {len(result.images)} image(s): {out / 'audit.json'}, {report}")
    if strategies:
        top = strategies[0]
        console.print(f"most suspicious: strategy {top['id']}: {top['why']}"
                      + (f"; {top['causal']}" if top.get("causal") else ""),
                      markup=False, highlight=False)
    named = (strategies[0].get("concepts") or [None])[0] if strategies else None
    if named is not None:
        console.print(f"top concept of strategy {strategies[0]['id']}: channel "
                      f"{named['channel']} of {named['layer']} (relevance share "
                      f"{named['member_share']:.0%} in its images against "
                      f"{named['rest_share']:.0%} in the rest)", markup=False, highlight=False)
    for key, entry in result.data.get("metrics", {}).items():
        if entry["mean"] is None:
            console.print(f"{key}: undefined on every image", markup=False, highlight=False)
        else:
            low, high = entry["ci"]
            console.print(f"{key}: mean {entry['mean']:.3f} [95% {low:.3f}, {high:.3f}] over "
                          f"{entry['count']} image(s)", markup=False, highlight=False)
    report_problems(result.errors)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the app."""
    app.command("audit")(audit)
