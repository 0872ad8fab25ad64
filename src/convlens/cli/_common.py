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

import ast
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from convlens.errors import (
    ConvlensError,
    MethodError,
    OutputError,
    did_you_mean,
)
from convlens.files import check_output
from convlens.option_types import OptionType, check_option, from_text, listing, option_types

if TYPE_CHECKING:  # the type only: importing it loads torch, which --help must not
    from convlens.models.classifier import Classifier

console = Console(soft_wrap=True)  # a line of ours stays one line in any log (terminals wrap)
errors = Console(stderr=True)  # for notes on stderr; error lines go through error_line()

EXIT_PARTIAL = 1  # some inputs failed, the rest was processed
EXIT_ERROR = 2    # nothing could be done: bad model, method, option...
# convlens.io.images.DEFAULT_MAX_PIXELS, repeated so that --help need not import Pillow
# (tests/cli/test_messages.py checks that the two agree).
DEFAULT_MAX_PIXELS = 64_000_000

# CSI / OSC / two-character escape sequences, as libraries put them in exception texts.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_message(message: object) -> str:
    """One printable line: escape sequences removed, line breaks joined, control bytes shown.

    Error texts come from many places (our messages with user-typed names and paths,
    torch's own messages with ANSI bold codes, Click's usage errors); none of them may put
    raw escapes on a terminal or into a log file.
    """
    text = _ANSI.sub("", str(message))
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _colour_stderr() -> bool:
    """Colour only on a terminal, never with NO_COLOR set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def error_line(message: object) -> None:
    """Write one ``error: message`` line to stderr (red prefix on a terminal only)."""
    prefix = "\x1b[1;31merror:\x1b[0m" if _colour_stderr() else "error:"
    sys.stderr.write(f"{prefix} {clean_message(message)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print ``error: message`` to stderr and exit."""
    error_line(message)
    raise typer.Exit(code)


def friendly_errors(command: Callable) -> Callable:
    """Turn our exceptions (and Ctrl-C) into one-line errors with the documented exit codes."""
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConvlensError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as error:  # writing outputs: disk full, permissions, a vanished folder
            where = f"{error.filename}: " if getattr(error, "filename", None) else ""
            fail(f"{where}{error.strerror or error}")

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
        from convlens.models.loading import load_model  # lazy: --help start-up

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
        None, "--weights",
        help="State dict (.safetensors, or a torch.save-d .pt/.pth) for a factory or "
             "torchvision:NAME (required there); an error with the bundled model or a model "
             "file, which hold their own weights.")),
    "labels": (Path | None, typer.Option(
        None, "--labels",
        help="Class names, one per model output: text (one per line) or JSON. Any model.")),
    "input_size": (int | None, typer.Option(
        None, "--input-size", min=1,
        help="Model input size in pixels (any model; overrides the bundled model's 224; at most "
             "8000x8000, the photo pixel cap).")),
    "mean": (str | None, typer.Option(
        None, "--mean",
        help="Normalisation mean, e.g. 0.485,0.456,0.406 (any model; overrides the "
             "bundled model's).")),
    "std": (str | None, typer.Option(
        None, "--std", help="Normalisation std, e.g. 0.229,0.224,0.225 (any model).")),
    "resize": (str | None, typer.Option(
        None, "--resize",
        help="How photos become the model's input: center_crop (default), squash or pad.")),
    "device": (str, typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")),
    "trust_model": (bool, typer.Option(
        False, "--trust-model",
        help="Allow model files that are programs (TorchScript, .pt2) or need full "
             "unpickling (.pt weights or models); an error where nothing needs trust "
             "(bundled model, safetensors, a factory without --weights).")),
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
    """``"0.485,0.456,0.406"`` -> a tuple of floats; a bad value fails with the option's name
    (inf and nan too: a NaN std turned every probability into nan)."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = None
    if values is None or not all(math.isfinite(v) for v in values):
        fail(f"{option} takes comma-separated finite numbers like 0.485,0.456,0.406; got "
             f"{text!r}")
    return values


def finite(value: float | None) -> float | None:
    """Typer callback of a float option: inf and nan are a usage error (exit 2), like a
    value below the option's ``min`` (which ``inf`` passes and ``nan`` fails obscurely)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number (inf and nan are refused), got "
                                 f"{value}")
    return value


def problem_record(path: Path, error: BaseException) -> dict[str, str]:
    """A bad input as recorded in results files: its path and the one-line reason."""
    reason = getattr(error, "reason", None) or str(error)
    return {"path": str(path), "error": reason}


def report_problems(problems: Sequence[Any]) -> None:
    """One ``error: PATH: REASON`` line per bad input, then exit 1 (the rest was done).

    A problem is an :class:`~convlens.io.images.InputProblem`, a results-file record
    (``{"path", "error"}``, :func:`problem_record`) or an ``errors`` entry of an audit or an
    evaluation (``{"path", "reason"}``).
    """
    if not problems:
        return
    for problem in problems:
        path = problem["path"] if isinstance(problem, dict) else problem.path
        reason = (problem.get("error", problem.get("reason")) if isinstance(problem, dict)
                  else problem.reason)
        error_line(f"{path}: {reason}")
    raise typer.Exit(EXIT_PARTIAL)


def parse_methods(text: str) -> list[str]:
    """``"gradcam,saliency"`` or ``"all"`` -> registered method names (unknown ones refused)."""
    from convlens.attribution.core import get_method, methods  # lazy: --help start-up

    if text.strip() == "all":
        return [m.name for m in methods()]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        fail("--method needs at least one method name (see `convlens methods`)")
    for name in names:
        get_method(name)
    return names


def max_pixels_option() -> Any:
    """The ``--max-pixels`` option of every command that reads photos (one definition)."""
    return typer.Option(
        None, "--max-pixels", min=1,
        help=f"Refuse photos with more pixels than this (width x height; default "
             f"{DEFAULT_MAX_PIXELS:,}), a guard against decompression bombs.")


def check_max_pixels(max_pixels: int | None) -> None:
    """Refuse a ``--max-pixels`` above what Pillow will ever decode (exit 2, before any work)."""
    from convlens.io.images import pillow_pixel_ceiling  # lazy: --help start-up (Pillow)

    ceiling = pillow_pixel_ceiling()
    if max_pixels is not None and ceiling is not None and max_pixels > ceiling:
        fail(f"--max-pixels can be at most {ceiling:,} (Pillow refuses larger images: twice "
             f"PIL.Image.MAX_IMAGE_PIXELS), got {max_pixels:,}")


def read_photo(path: Path, max_pixels: int | None) -> Any:
    """``load_image`` with the CLI's ``--max-pixels`` (None: the library default)."""
    from convlens.io.images import load_image  # lazy: --help start-up (Pillow)

    return load_image(path, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)


def model_input(classifier: Classifier, photo: Any) -> Any:
    """A decoded photo -> the ``(1, C, H, W)`` tensor the classifier sees (its preprocessing:
    --input-size, --resize, --mean, --std), without decoding or size-checking it again."""
    resized, _ = classifier.preprocessing.resize_image(photo)
    return classifier.preprocessing.to_tensor(resized)[None].to(classifier.device)


# ------------------------------------------------------------------------------ output


def prepare_out(out: Path, option: str = "--out") -> Path:
    """Make sure ``out`` can be an output folder, before any work is done.

    A thin wrapper of :func:`convlens.files.check_output`, the one folder check of the
    library and the CLI (writable; new, empty or convlens's): its OutputError becomes the
    one-line error ``OPTION: cannot write OUT: REASON`` (exit 2).
    """
    try:
        return check_output(out, option=option)
    except OutputError as error:
        fail(f"{option}: {error}")
    return out


# ------------------------------------------------------- method and metric options


def settables(function: Callable | None, defaults: Mapping[str, Any]) -> dict[str, OptionType]:
    """``defaults`` (option -> default) with the types ``function``'s annotations give them
    (:func:`convlens.option_types.option_types`, the one judge of option values for the
    library's ``bind`` and for ``--option``)."""
    return option_types(function, defaults)


def literal_value(text: str) -> Any:
    """A Python literal (``64``, ``0.5``, ``True``, ``(1, 2)``, ``'x'``) or, failing that, the
    plain string (``composite=epsilon_plus_flat``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_registry_options(
    values: Sequence[str], run: Mapping[str, Mapping[str, OptionType]] | None, *, kind: str,
    flag: str, listed_by: str, example: str, lookup: Callable[[str], object],
    error: type[Exception], read_value: Callable[[str], Any] = literal_value,
    bare: bool = True,
) -> dict[str, dict[str, Any]]:
    """``KEY.NAME=VALUE`` strings -> options per registry entry of the run, validated.

    The one parser behind ``--option`` (methods) and ``--option`` / ``--metric-option``
    (metrics): the same form, the same checks and the same messages for both registries.
    ``KEY`` is split off at the last dot before ``=`` (metric keys may carry a preset:
    ``deletion:xplique.step=112``). With ``bare``, ``NAME=VALUE`` applies to every entry of
    the run that has option ``NAME``. A later value for the same option wins.

    Args:
        values: The raw flag values.
        run: Entry key of this run (``--method`` / ``--metric``) -> what it lets one set;
            None: check the form only.
        kind: ``"method"`` or ``"metric"``, for messages.
        flag: The flag the values came from (``--option``), for messages.
        listed_by: The flag that lists the run's entries (``--method``), for messages.
        example: A valid value, for the message on a bad form.
        lookup: Called with a key not in the run: raises the registry's own error when the
            key is unknown to the registry.
        error: The exception to raise (a ConvlensError).
        read_value: Text -> value.
        bare: Accept ``NAME=VALUE`` without a key.

    Returns:
        ``{key: {name: value}}``, with an entry (maybe empty) for every key of ``run``.

    Raises:
        error: A bad form, a key unknown to the registry or not in the run, an option the
            entry lacks (with did-you-mean), an infinite or NaN number (``1e999``, ``nan``;
            the wording of :func:`convlens.errors.finite_message`, as ``bind`` refuses
            them in the library), or a value of the wrong type; the message lists the
            entry's options with their defaults.
    """
    keys = list(run or {})
    parsed: dict[str, dict[str, Any]] = {key: {} for key in keys}
    upper = kind.upper()
    form = f"{flag} takes {upper}.NAME=VALUE{' or NAME=VALUE' if bare else ''}, e.g. {example}"
    for raw in values:
        prefix, sep, text = str(raw).partition("=")
        prefix, text = prefix.strip(), text.strip()
        key, dot, name = prefix.rpartition(".")
        if not sep or not name or not text or (dot and not key) or (not dot and not bare):
            raise error(f"{form}; got {raw!r}")
        value = read_value(text)
        if run is None:
            parsed.setdefault(key, {})[name] = value
            continue
        if dot:
            if key not in run:
                try:
                    lookup(key)
                except ConvlensError as unknown:
                    raise error(f"{flag} {raw!r}: {unknown}{did_you_mean(key, keys)}") from None
                raise error(f"{flag} {raw!r}: {kind} {key!r} is not among the {kind}s of this "
                            f"run ({', '.join(keys) or 'none'}){did_you_mean(key, keys)}; add "
                            f"it to {listed_by} or drop the option")
            targets = [key]
        else:
            targets = [k for k in keys if name in run[k]]
            if not targets:
                listed = "; ".join(f"{k}: {_listing(run[k])}" for k in keys)
                choices = [option for k in keys for option in run[k]]
                raise error(f"{flag} {raw!r}: no {kind} of this run has an option {name!r}"
                            f"{did_you_mean(name, choices)}; options: "
                            f"{listed or f'none (no {kind}s)'}")
        for target in targets:
            options = run[target]
            if name not in options:
                raise error(f"{flag} {raw!r}: {kind} {target!r} has no option {name!r}"
                            f"{did_you_mean(name, options)}; its options are: "
                            f"{_listing(options)}")
            try:
                parsed[target][name] = check_option(
                    target, name, from_text(options[name], text, read_value), options[name],
                    options={k: v.default for k, v in options.items()}, error=error)
            except ConvlensError as wrong:
                raise error(f"{flag} {raw!r}: {wrong}") from None
    return parsed


def method_settables(method: Any) -> dict[str, OptionType]:
    """What ``--option`` may set on ``method``: its own options (typed as ``Method.bind``
    checks them), plus ``layer`` for CAM-like ones (any value)."""
    found = dict(method.types or settables(method.compute or method.combine, method.options))
    return {**found, "layer": OptionType(None)} if method.needs_layer else found


def _listing(options: Mapping[str, OptionType]) -> str:
    return listing({name: option.default for name, option in options.items()})


def parse_method_options(values: list[str], methods: list[str], *, flag: str = "--option"
                         ) -> dict[str, dict[str, Any]]:
    """``--option METHOD.NAME=VALUE`` (repeatable) -> options per method.

    ``VALUE`` is read with :func:`literal_value` (``64``, ``0.5``, ``True``, ``(1, 2)``,
    ``'x'``, else the plain string: ``composite=epsilon_plus_flat``). Without a method
    prefix, ``NAME=VALUE`` applies to every listed method that has option ``NAME``. A later
    value for the same option wins. Types are judged by the annotations of the method's
    function (:func:`settables`).

    Args:
        values: The raw ``--option`` strings.
        methods: The method names of the run (``--method``).
        flag: The flag's name in messages (``evaluate`` calls it ``--method-option``).

    Returns:
        ``{method: {name: value}}`` for every method in ``methods`` (empty when none given).

    Raises:
        MethodError: A bad form, an unknown method or one not in ``methods``, an option the
            method lacks, or a value of the wrong type; the message lists the valid options
            of the method with their defaults.

    Example:
        >>> parse_method_options(["integrated_gradients.steps=16"], ["integrated_gradients"])
        {'integrated_gradients': {'steps': 16}}
    """
    from convlens.attribution.core import get_method  # lazy: --help start-up (torch)

    run = {name: method_settables(get_method(name)) for name in methods}
    return parse_registry_options(
        values, run, kind="method", flag=flag, listed_by="--method",
        example="integrated_gradients.steps=64 or samples=16", lookup=get_method,
        error=MethodError)
