"""The exceptions convlens raises on purpose.

Every message says what was expected, what arrived and how to fix it, so that a user
never has to read a traceback from deep inside torch. All of them derive from
:class:`ConvlensError`; most also derive from the built-in type a Python user would
catch for the same mistake (``ValueError``, ``KeyError``, ``FileNotFoundError``...).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


class ConvlensError(Exception):
    """Base class of every error convlens raises on purpose."""


def _choices(valid: Iterable[str], limit: int = 40) -> str:
    """Format a list of valid choices for an error message, shortened when long."""
    names = list(valid)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


class ImageError(ConvlensError, ValueError):
    """An image could not be read or converted.

    Attributes:
        path: The file that failed, or ``None`` for in-memory inputs.
        reason: Why, in words.
    """

    def __init__(self, path: object | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path is not None else self.reason

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.path, self.reason))


class ModelLoadError(ConvlensError, ValueError):
    """A model, its weights or its labels could not be loaded."""


class UnsafeCheckpointError(ModelLoadError):
    """A file would need arbitrary code execution (pickle) to load, and trust was not given."""


class LayerError(ConvlensError, KeyError):
    """A layer name or module does not exist in the model, or has the wrong kind of output."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class TargetError(ConvlensError, ValueError):
    """A target class is out of range, unknown, or has the wrong shape."""


class MethodError(ConvlensError, ValueError):
    """An attribution method or one of its options is unknown or invalid."""


class UnsupportedModelError(ConvlensError, TypeError):
    """The model cannot be explained by the requested method (and we refuse to guess)."""


class LabelMismatchError(ConvlensError, ValueError):
    """The dataset's labels (ImageFolder folders, CSV labels) are not among the model's."""


class CorrectionError(ConvlensError, ValueError):
    """A correction (``convlens correct``) cannot be made from what it was given: an unknown
    strategy, unlabelled images, training data whose labels the model does not know."""


class ObjectiveError(ConvlensError, ValueError):
    """A feature-visualization objective, parameterisation or transform is invalid."""


class InputShapeError(ConvlensError, ValueError):
    """A tensor input has the wrong shape, dtype or device."""


class MetricError(ConvlensError, ValueError):
    """A metric, preset or option is unknown or invalid, or the model's output is unusable."""


class DirectionError(CorrectionError):
    """A strategy's direction cannot be estimated (no class with both members and others)."""


class CorrectionReportError(ConvlensError, ValueError):
    """The folder is not one ``convlens correct`` wrote (or a file in it is unreadable)."""


class PatchError(ConvlensError, ValueError):
    """A position, channel, mode or box that does not fit the layer or the image."""


class ConceptError(ConvlensError, ValueError):
    """A concept, random or image set that TCAV cannot use (empty, too small, no class)."""


class ReferenceSetError(ConvlensError, ValueError):
    """A reference set that cannot be computed or read as asked."""


class EngineError(ConvlensError, RuntimeError):
    """An engine cannot start (Ray missing, no cluster at the address) or a worker failed."""


class ProgressError(ConvlensError, TypeError):
    """A long job's ``progress`` argument is none of None, True, False or a callable."""


# ------------------------------------------------- the web app (convlens serve)


class AuditError(ConvlensError, ValueError):
    """An audit folder is missing its ``audit.json`` or the file does not follow the schema."""


class AuditNotFound(AuditError, LookupError):
    """No such audit or image, or an image outside the audit's data folder (HTTP 404)."""


class AtlasNotFound(AuditNotFound):
    """No such atlas, channel, mode or rank, or an image outside the atlas's data (404)."""


class Cancelled(ConvlensError):
    """A computation stopped because its client went away or the server is stopping."""


class RequestTooLarge(ConvlensError, ValueError):
    """A request body went over the server's byte cap (HTTP 413)."""


class PortError(ConvlensError, OSError):
    """The address or port to listen on cannot be used."""


class BadRequest(ConvlensError, ValueError):
    """A request body that is not the JSON object a route expects (HTTP 422)."""


class TooMuchWork(ConvlensError, ValueError):
    """A request asking for more classes or maps than one request may (HTTP 422)."""


def unknown_choice(kind: str, got: object, valid: Iterable[str]) -> str:
    """Message for an unknown name: ``unknown method 'x'; valid: a, b, c``."""
    return f"unknown {kind} {got!r}; valid {kind}s: {_choices(valid)}"


class ConvlensWarning(UserWarning):
    """A result was computed but may mean nothing (a 1x1 photo, an all-zero map...).

    The same text is kept in :attr:`convlens.explanations.Explanation.notes`, so a batch job
    can record it beside the result; filter it with ``warnings.simplefilter``.
    """


class OutputError(ConvlensError, OSError):
    """An output file or folder could not be written (full disk, no permission, a file in the way).

    Attributes:
        path: The file or folder that could not be written.
        reason: Why, in words (the operating system's reason and what to do).
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.reason))


class OutputBusyError(ConvlensError, OSError):
    """Another process is writing into the same output folder (it holds the folder's lock).

    Attributes:
        path: The output folder.
        holder: What the lock file says of the holder (its PID and command), or ``""``.
    """

    def __init__(self, path: object, holder: str = "") -> None:
        self.path = path
        self.holder = holder
        super().__init__(str(self))

    def __str__(self) -> str:
        pid, _, command = self.holder.partition(" ")
        who = (f"another run ({command or 'convlens'}, PID {pid})" if pid.isdigit()
               else "another convlens run")
        return (f"{who} is writing into {self.path}; wait for it to finish or choose another "
                "output folder")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.holder))


class StoreMismatchError(ConvlensError, ValueError):
    """A results folder holds results of a different configuration than the one asked for."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ``"; did you mean 'tabby'?"`` suffix for an unknown name, or ``""`` when none is close.

    Close means :func:`difflib.get_close_matches` (ratio >= 0.6) on the lower-cased names,
    plus names that contain ``name`` as a word part (``"tabby"`` -> ``"tabby cat"``), at
    most five, best first. Shared by every "unknown NAME" message so they read alike.

    Example:
        >>> did_you_mean("tabyb", ["tabby", "tiger", "toucan"])
        "; did you mean 'tabby'?"
    """
    import difflib

    names = list(dict.fromkeys(str(choice) for choice in choices))
    by_lower: dict[str, str] = {}
    for choice in names:
        by_lower.setdefault(choice.lower(), choice)
    wanted = str(name).lower().strip()
    if not wanted:
        return ""
    close = [by_lower[match] for match in
             difflib.get_close_matches(wanted, list(by_lower), n=5, cutoff=0.6)]
    if len(close) < 5 and len(wanted) >= 3:
        close += [choice for choice in names
                  if wanted in choice.lower() and choice not in close][:5 - len(close)]
    if not close:
        return ""
    quoted = [repr(choice) for choice in close]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {listed}?"


def non_finite(value: object) -> bool:
    """Whether ``value`` is an infinite or NaN number, or a tuple/list holding one.

    ``1e999`` parses to ``inf``; an option set to it runs (SmoothGrad's noise swamps the
    image and the maps come out all zero) and then poisons every JSON file it is written to
    (``Infinity`` is not JSON). Tensors are not looked into: a baseline tensor is data.
    """
    if isinstance(value, (tuple, list)):
        return any(non_finite(item) for item in value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return not math.isfinite(float(value))
    return False


def finite_message(option: str, value: object, default: object = None) -> str:
    """The one wording of a refused ``inf``/``nan`` option, shared by the CLI's ``--option``
    parsing and the registries' ``bind`` (``Method.bind``, ``Metric.bind``)."""
    shown = "" if default is None else f" (default {default!r})"
    return (f"{option} takes a finite number{shown}, got {value!r}: inf, nan and numbers "
            "beyond +-1.8e308 (such as 1e999) are refused")
