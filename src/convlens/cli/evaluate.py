"""``evaluate`` (rank attribution methods with metrics) and ``metrics`` (what can be measured)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer

from convlens.cli._common import (
    ModelOptions,
    console,
    fail,
    friendly_errors,
    parse_method_options,
    parse_methods,
    parse_registry_options,
    report_problems,
    settables,
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
from convlens.files import claim_output


def _value(text: str) -> Any:
    """``16`` -> 16, ``0.5`` -> 0.5, ``none`` -> None, ``[10,20]`` -> list, else the text."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_options(items: list[str], flag: str, metrics: Sequence[str] | None = None, *,
                  listed_by: str = "--metric") -> dict[str, dict[str, Any]]:
    """``["deletion.step=112", ...]`` -> ``{"deletion": {"step": 112}}``, checked against the
    metric registry like ``--option`` is against the method registry
    (:func:`convlens.cli._common.parse_registry_options`).

    Args:
        items: The raw ``METRIC.NAME=VALUE`` strings; ``METRIC`` is a key as given to
            ``--metric`` (``deletion:xplique.step=112``), ``VALUE`` is read by :func:`_value`.
        flag: The flag's name in messages (``--option``, ``--metric-option``).
        metrics: The metric keys of the run; None: check the form only.
        listed_by: The flag that lists the metrics, in messages (``--metric``).

    Raises:
        MetricError: A bad form, an unknown metric or one not in ``metrics``, an option the
            metric lacks (with did-you-mean), or a value of the wrong type (by the
            annotations of the metric's function); the message lists the metric's options
            with their defaults (the preset's, for ``NAME:PRESET``).
    """
    # lazy: --help start-up (torch)
    from convlens.metrics.core import MetricError
    from convlens.metrics.evaluate import parse_metric

    run = None
    if metrics is not None:
        run = {}
        for key in metrics:
            metric, preset = parse_metric(key)
            run[key] = settables(metric.compute, metric.bind(preset=preset))
    parsed = parse_registry_options(
        items, run, kind="metric", flag=flag, listed_by=listed_by,
        example="deletion.step=112", lookup=parse_metric, error=MetricError,
        read_value=_value, bare=False)
    return {key: options for key, options in parsed.items() if options}


def parse_metrics(text: str) -> list[str]:
    """``"deletion,insertion:xplique"`` or ``"all"`` -> metric keys (unknown ones refused)."""
    # lazy: --help start-up (torch)
    from convlens.metrics import metrics
    from convlens.metrics.evaluate import parse_metric

    if text.strip() == "all":
        return [m.name for m in metrics()]
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        fail("--metric needs at least one metric name (see `convlens metrics`)")
    for key in keys:
        parse_metric(key)
    return keys


@friendly_errors
@with_model_options
def evaluate(
    images: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    method: str = typer.Option("gradcam,saliency", "--method",
                               help="Comma-separated method names (see `methods`)."),
    metric: str = typer.Option("deletion,insertion", "--metric",
                               help="Comma-separated metrics, NAME or NAME:PRESET "
                                    "(see `metrics`), or 'all'."),
    target: str = typer.Option("pred", "--target", help="pred, a class INDEX or a class NAME."),
    layer: str | None = typer.Option(None, "--layer", help="Layer for CAMs (see `layers`)."),
    option: list[str] = typer.Option([], "--option",
                                     help="Metric option METRIC.NAME=VALUE (repeatable)."),
    method_option: list[str] = typer.Option([], "--method-option",
                                            help="Method option METHOD.NAME=VALUE (repeatable)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Write evaluation.json, evaluation.html and figures."),
    image_batch: int = typer.Option(16, "--image-batch", min=1,
                                    help="Images attributed and scored at a time."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0,
                                  help="Bootstrap resamples for the 95% intervals."),
    engine: str = engine_option(),
    ray_address: str | None = ray_address_option(),
    actors: int | None = actors_option(),
    gpus_per_actor: float | None = gpus_per_actor_option(),
    *, model_options: ModelOptions,
) -> None:
    """Score methods with metrics on these images; print a ranking per metric."""
    method_names = parse_methods(method)
    metric_keys = parse_metrics(metric)
    metric_options = parse_options(option, "--option", metric_keys)
    method_options = {name: opts for name, opts in parse_method_options(
        method_option, method_names, flag="--method-option").items() if opts}
    target_value: Any = None if target == "pred" else (
        int(target) if target.strip().lstrip("-").isdigit() else target)
    engine, engine_options = engine_settings(engine, ray_address, actors, gpus_per_actor)
    # --out is claimed before the model loads: a file, a read-only or a user's folder, or
    # another run in it, fails before any work
    with claim_output(out, inputs=images, what="convlens evaluate") if out else nullcontext():
        from convlens.metrics.evaluate import evaluate as run  # lazy: --help start-up

        classifier = model_options.load()
        with cli_progress() as progress:
            result = run(classifier, [str(path) for path in images], method_names, metric_keys,
                         target_value, layer=layer, method_options=method_options,
                         metric_options=metric_options, image_batch=image_batch,
                         bootstrap=bootstrap, progress=progress, engine=engine,
                         engine_options=engine_options)
        _print_rankings(result, metric_keys)
        if out is not None:
            written = result.save(out)
            console.print(f"wrote {len(written)} file(s) to {out}/ (evaluation.json, "
                          "evaluation.html)")
    report_problems(result.errors)


def _print_rankings(result: Any, metric_keys: list[str]) -> None:
    """One table per metric (rank, mean, interval), then each method's stages if any."""
    from rich.table import Table

    for key in metric_keys:
        card = result.cards[key]
        direction = "higher is better" if card["higher_is_better"] else "lower is better"
        table = Table("rank", "method", "mean", "95% interval", "images", "undefined",
                      title=f"{key} ({direction})", title_justify="left")
        for row in result.ranking(key):
            interval = "-" if row.low is None else f"[{row.low:.3f}, {row.high:.3f}]"
            mean = "-" if row.mean is None else f"{row.mean:.3f}"
            undefined = "; ".join(f"{n} x {r}" for r, n in row.undefined.items())
            table.add_row(str(row.rank or "-"), row.method, mean, interval, str(row.count),
                          undefined)
        console.print(table)
        for row in result.ranking(key):
            s = result.scores[(row.method, key)]
            if s.stages:
                stages = ", ".join(f"{k} {float(v.mean()):.2f}" for k, v in s.stages.items())
                console.print(f"  {row.method}: {stages}", highlight=False)


def list_metrics() -> None:
    """Every metric: family, options with defaults, presets, paper."""
    from rich.table import Table

    from convlens.metrics import metrics  # lazy: --help start-up (torch)

    table = Table("metric", "family", "needs", "options (defaults)", "presets", "reference")
    for m in metrics():
        options = ", ".join(f"{k}={v!r}" for k, v in m.options.items())
        table.add_row(m.name, m.family, m.needs, options, ", ".join(m.presets) or "-",
                      m.reference)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``metrics`` to the app."""
    app.command("evaluate")(evaluate)
    app.command("metrics")(friendly_errors(list_metrics))
