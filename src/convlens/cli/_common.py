"""What every command shares: one-line errors, exit codes and the one set of model options.

Errors: convlens's own exceptions become one ``error: ...`` line on stderr and exit code 2
(:data:`EXIT_ERROR`); a batch command that skipped bad inputs exits with 1
(:data:`EXIT_PARTIAL`) after doing the rest.

Model options: :func:`with_model_options` adds ``--model``, ``--weights``, ``--labels``,
``--input-size``, ``--mean``, ``--std``, ``--resize``, ``--device`` and ``--trust-model`` to a
command and hands it one :class:`ModelOptions` (``model_options`` parameter), so the options
are defined once and every command that loads a model spells them the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import wraps
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)

EXIT_PARTIAL = 1  # some inputs failed, the rest was processed
EXIT_ERROR = 2    # nothing could be done: bad model, method, option...


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print ``error: message`` to stderr and exit."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(command: Callable) -> Callable:
    """Turn our exceptions (and Ctrl-C) into one-line errors with the documented exit codes."""
    from convlens.errors import ConvlensError

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

    def load(self) -> Any:
        """The Classifier these options describe (a ConvlensError when they don't fit)."""
        from convlens.models.loading import load_model

        return load_model(
            self.model, weights=self.weights, labels=self.labels, input_size=self.input_size,
            mean=parse_floats(self.mean, "--mean"), std=parse_floats(self.std, "--std"),
            resize=self.resize, device=self.device, trust_model=self.trust_model,
        )


# name -> (annotation, typer.Option): the one definition of the shared model options.
_MODEL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (str, typer.Option(
        "efficientnet_lite0", "--model", "-m",
        help="Bundled name, model file (.pt TorchScript, .pt2), 'package.module:factory', "
             "'file.py:factory' or 'torchvision:NAME'.")),
    "weights": (Path | None, typer.Option(
        None, "--weights", help="State dict (.safetensors or .pt) for a factory or torchvision.")),
    "labels": (Path | None, typer.Option(
        None, "--labels", help="Class names: text (one per line) or JSON.")),
    "input_size": (int | None, typer.Option(
        None, "--input-size", help="Model input size in pixels.")),
    "mean": (str | None, typer.Option(
        None, "--mean", help="Normalisation mean, e.g. 0.485,0.456,0.406.")),
    "std": (str | None, typer.Option(
        None, "--std", help="Normalisation std, e.g. 0.229,0.224,0.225.")),
    "resize": (str | None, typer.Option(
        None, "--resize", help="center_crop, squash or pad.")),
    "device": (str, typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")),
    "trust_model": (bool, typer.Option(
        False, "--trust-model",
        help="Allow model files that are programs or need full unpickling.")),
}
assert set(_MODEL_OPTIONS) == {f.name for f in fields(ModelOptions)}


def with_model_options(command: Callable) -> Callable:
    """Give a command the shared model options, collected into ``model_options: ModelOptions``.

    The decorated function declares a ``model_options`` parameter; Typer sees the nine
    model options in its place (after the command's own options), with one help text each.
    """
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "model_options"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                               annotation=annotation)
             for name, (annotation, option) in _MODEL_OPTIONS.items()]

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _MODEL_OPTIONS}
        return command(*args, model_options=ModelOptions(**values), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    return wrapper


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` -> a tuple of floats; a bad value fails with the option's name."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        fail(f"{option} takes comma-separated numbers like 0.485,0.456,0.406; got {text!r}")
    return None


def problem_record(path: Path, error: BaseException) -> dict[str, str]:
    """A bad input as recorded in results files: its path and the one-line reason."""
    reason = getattr(error, "reason", None) or str(error)
    return {"path": str(path), "error": reason}


def report_problems(problems: Sequence[Any]) -> None:
    """One ``error: PATH: REASON`` line per bad input, then exit 1 (the rest was done)."""
    if not problems:
        return
    for problem in problems:
        path = problem["path"] if isinstance(problem, dict) else problem.path
        reason = problem["error"] if isinstance(problem, dict) else problem.reason
        errors.print(f"[bold red]error:[/] {escape(f'{path}: {reason}')}", highlight=False,
                     soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL)


def parse_methods(text: str) -> list[str]:
    """``"gradcam,saliency"`` or ``"all"`` -> registered method names (unknown ones refused)."""
    from convlens.attribution.core import get_method, methods

    if text.strip() == "all":
        return [m.name for m in methods()]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        fail("--method needs at least one method name (see `convlens methods`)")
    for name in names:
        get_method(name)
    return names
