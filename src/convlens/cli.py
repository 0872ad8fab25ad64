"""The ``convlens`` command line: predict, layers, methods, explain, demo.

Every command turns convlens's own errors into one line on stderr (``error: ...``) and a
non-zero exit code; a batch command keeps going past a bad file, records it, and exits
with code 1 at the end so scripts notice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from convlens._cli_options import (
    DeviceOpt,
    LabelsOpt,
    MeanOpt,
    ModelOpt,
    ResizeOpt,
    SizeOpt,
    StdOpt,
    TrustOpt,
    WeightsOpt,
)
from convlens.errors import ConvlensError

app = typer.Typer(
    name="convlens",
    help="See why a convolutional image classifier decides what it decides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

EXIT_PARTIAL = 1  # some inputs failed, the rest was processed
EXIT_ERROR = 2    # nothing could be done: bad model, method, option...


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print ``error: message`` to stderr and exit."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(command: Callable) -> Callable:
    """Turn our exceptions (and a few obvious user mistakes) into one-line errors."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConvlensError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


@dataclass
class ModelOptions:
    """The options every command shares to choose and set up a model."""

    model: str = "efficientnet_lite0"
    weights: Path | None = None
    labels: Path | None = None
    input_size: int | None = None
    mean: str | None = None
    std: str | None = None
    resize: str | None = None
    device: str = "auto"
    trust_model: bool = False
    extra: dict = field(default_factory=dict)

    def load(self):
        from convlens.models.loading import load_model

        return load_model(
            self.model, weights=self.weights, labels=self.labels, input_size=self.input_size,
            mean=_floats(self.mean, "--mean"), std=_floats(self.std, "--std"),
            resize=self.resize, device=self.device, trust_model=self.trust_model,
        )


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        fail(f"{option} takes comma-separated numbers like 0.485,0.456,0.406; got {text!r}")
    return None




def _model_options(model, weights, labels, input_size, mean, std, resize, device, trust_model):
    return ModelOptions(model, weights, labels, input_size, mean, std, resize, device, trust_model)


@app.command()
@friendly_errors
def predict(
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes per image."),
    model: str = ModelOpt, weights: Path | None = WeightsOpt,
    labels: Path | None = LabelsOpt, input_size: int | None = SizeOpt,
    mean: str | None = MeanOpt, std: str | None = StdOpt,
    resize: str | None = ResizeOpt, device: str = DeviceOpt, trust_model: bool = TrustOpt,
) -> None:
    """Print the top classes of each image."""
    from convlens.io.images import expand_inputs, load_image

    files, problems = expand_inputs(images)
    classifier = _model_options(model, weights, labels, input_size, mean, std, resize, device,
                                trust_model).load()
    table = Table("image", "rank", "class", "probability")
    for path in files:
        try:
            image = load_image(path)
        except ConvlensError as error:
            problems.append(_problem(path, error))
            continue
        for rank, (label, probability) in enumerate(classifier.predict([image], top=top)[0], 1):
            table.add_row(str(path) if rank == 1 else "", str(rank), label, f"{probability:.4f}")
    if files:
        console.print(table)
    _report_problems(problems)


@app.command()
@friendly_errors
def layers(
    model: str = ModelOpt, weights: Path | None = WeightsOpt,
    labels: Path | None = LabelsOpt, input_size: int | None = SizeOpt,
    device: str = DeviceOpt, trust_model: bool = TrustOpt,
) -> None:
    """List every layer's name, type and output shape, to choose --layer."""
    import convlens

    classifier = _model_options(model, weights, labels, input_size, None, None, None, device,
                                trust_model).load()
    from convlens.models.layers import default_layer_name

    height, width = classifier.preprocessing.input_size
    default = default_layer_name(classifier.module,
                                 (classifier.preprocessing.channels, height, width),
                                 classifier.device)
    table = Table("layer", "type", "output shape", "parameters")
    for info in convlens.layers(classifier):
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        name = f"{info.name} (default)" if info.name == default else info.name
        table.add_row(name, info.type, shape, f"{info.parameters:,}")
    console.print(table)


@app.command("methods")
@friendly_errors
def list_methods() -> None:
    """List every attribution method with its family, options and paper."""
    from convlens.attribution.core import methods

    table = Table("method", "family", "output", "options", "reference")
    for method in methods():
        options = ", ".join(f"{k}={v!r}" for k, v in method.options.items()) or "-"
        table.add_row(method.name, method.family, method.space, options, method.reference)
    console.print(table)


def _parse_methods(text: str) -> list[str]:
    from convlens.attribution.core import get_method, methods

    if text.strip() == "all":
        return [m.name for m in methods()]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        fail("--method needs at least one method name (see `convlens methods`)")
    for name in names:
        get_method(name)
    return names


def _parse_target(text: str) -> Any:
    from convlens.explain import parse_target

    parse_target(text)  # validates top:K
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _problem(path: Path, error: BaseException) -> dict[str, str]:
    reason = getattr(error, "reason", None) or str(error)
    return {"path": str(path), "error": reason}


def _report_problems(problems: Sequence[Any]) -> None:
    if not problems:
        return
    for problem in problems:
        path = problem["path"] if isinstance(problem, dict) else problem.path
        reason = problem["error"] if isinstance(problem, dict) else problem.reason
        errors.print(f"[bold red]error:[/] {path}: {reason}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL)


@app.command()
@friendly_errors
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
    model: str = ModelOpt, weights: Path | None = WeightsOpt,
    labels: Path | None = LabelsOpt, input_size: int | None = SizeOpt,
    mean: str | None = MeanOpt, std: str | None = StdOpt,
    resize: str | None = ResizeOpt, device: str = DeviceOpt, trust_model: bool = TrustOpt,
) -> None:
    """Write heatmaps (one PNG per method), a grid per image and results.json."""
    from convlens.report import ExplainJob

    if normalize not in ("image", "batch"):
        fail(f"--normalize must be 'image' or 'batch', got {normalize!r}")
    method_names = _parse_methods(method)
    target_value = _parse_target(target)
    classifier = _model_options(model, weights, labels, input_size, mean, std, resize, device,
                                trust_model).load()
    job = ExplainJob(classifier, method_names, out, target=target_value, layer=layer,
                     normalize=normalize, batch_size=batch_size)
    problems = job.run(images, progress=True)
    console.print(f"wrote {len(job.records)} explanation(s) to {out}/ (results.json)")
    _report_problems(problems)


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder."),
    method: str = typer.Option("all", "--method", help="Methods to show (default: all)."),
    device: str = DeviceOpt,
    features: bool = typer.Option(True, "--features/--no-features",
                                  help="Include the feature visualization section."),
) -> None:
    """Predict and explain the sample photos with every method; write DIR/index.html."""
    from convlens.report import build_demo

    page = build_demo(out, methods=_parse_methods(method), device=device, features=features)
    console.print(f"demo page: {page}")


def _register_extensions() -> None:
    from convlens import cli_visualize

    cli_visualize.register(app)


_register_extensions()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``convlens`` script."""
    app(args=list(argv) if argv is not None else None, prog_name="convlens")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
