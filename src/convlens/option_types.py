"""Option values checked and converted against the registered function's signature (a leaf).

Both registries (methods in ``attribution/registry.py``, metrics in ``metrics/registry.py``)
take their options from the keyword-only parameters of the registered function, so its
annotations say which types each option takes: ``occlusion``'s ``window`` is ``int |
tuple[int, int]`` with default 16, ``deletion``'s ``step`` is ``int | None`` with default 224.
This module is the one place those types are judged. :func:`check_option` serves
``Method.bind`` / ``Metric.bind`` (typed values from library calls are checked) and the CLI's
``--option`` (strings from the command line are converted, then checked), so a wrong type
fails with the same words from both:
``smoothgrad.samples takes an int (default 50), got 'many'; its options are: ...``.

What is judged: ``int``, ``float`` (an int is a float), ``bool``, ``str``, ``None``,
``Literal[...]`` choices, unions and ``Optional``, ``tuple[...]`` (fixed length or ``...``)
and sequences (``Sequence[float]``, ``list[str]``: a tuple or a list). Any other annotation
(``object``, ``Mapping``, a tensor, a project alias such as ``RulesOption``) is not judged
here: such an option takes anything and the registered function checks it. An option with
no annotation is judged by its default's type (a default of None: anything).
"""

from __future__ import annotations

import collections.abc as abc
import contextlib
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from convlens.errors import ConvlensError, finite_message, non_finite

_SEQUENCES = (abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection, list)
_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


@dataclass(frozen=True)
class OptionType:
    """What one option takes.

    Attributes:
        default: Its default (shown in messages; judges the value when there is no
            annotation).
        annotation: Its resolved annotation (``int | None``, ``tuple[int, int]``), or None
            when the function declares none.
    """

    default: Any
    annotation: Any = None


def option_types(function: Callable[..., Any] | None, defaults: Mapping[str, Any]
                 ) -> dict[str, OptionType]:
    """``defaults`` (option -> default) with the annotations ``function`` declares for them.

    Annotations written as strings (``from __future__ import annotations``) are resolved in
    the function's module; one that cannot be resolved (a name imported only for type
    checkers) is not judged.
    """
    if function is None:
        return {name: OptionType(default) for name, default in defaults.items()}
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001  (an unresolvable hint: resolve the others one by one)
        hints = {}
    parameters = inspect.signature(function).parameters
    found: dict[str, OptionType] = {}
    for name, default in defaults.items():
        annotation = hints.get(name)
        parameter = parameters.get(name)
        if annotation is None and parameter is not None:
            annotation = _resolve(parameter.annotation, function)
        found[name] = OptionType(default, annotation)
    return found


def _resolve(annotation: Any, function: Callable[..., Any]) -> Any:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            return eval(annotation, getattr(function, "__globals__", {}))  # noqa: S307
        except Exception:  # noqa: BLE001  (not judged: the function checks the value)
            return object
    return annotation


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``int | None``, ``Optional[int]``), else the annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _verdict(annotation: Any, value: Any) -> bool | None:
    """Whether ``value`` has the type ``annotation`` names; None where it is not judged."""
    verdicts = [_one(member, value) for member in _alternatives(annotation)]
    if True in verdicts:
        return True
    return None if None in verdicts else False


def _one(annotation: Any, value: Any) -> bool | None:
    origin = typing.get_origin(annotation)
    if annotation is None or annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return any(type(value) is type(choice) and value == choice
                   for choice in typing.get_args(annotation))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is tuple or origin is tuple:
        return _items(typing.get_args(annotation), value, fixed=True)
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        return _items(typing.get_args(annotation), value, fixed=False)
    return None


def _items(args: tuple[Any, ...], value: Any, *, fixed: bool) -> bool | None:
    """A tuple or list whose items fit ``args`` (``tuple[int, int]``, ``tuple[int, ...]``,
    ``Sequence[float]``); no args: any tuple or list."""
    if not isinstance(value, (tuple, list)):
        return False
    if fixed and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return False
        pairs = list(zip(args, value, strict=True))
    else:
        pairs = [(args[0], item) for item in value] if args else []
    verdicts = [_verdict(kind, item) for kind, item in pairs]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def accepts(option: OptionType, value: Any) -> bool:
    """Whether ``value`` has a type the option takes: its annotation, else its default's type
    (a default of None: anything)."""
    if option.annotation is not None:
        return _verdict(option.annotation, value) is not False
    default = option.default
    if default is None:
        return True
    for kind, holds in ((bool, bool), (int, int), (float, float), (tuple, (tuple, list))):
        if isinstance(default, holds):
            return _one(kind, value) is not False
    return isinstance(value, type(default))


def describe(option: OptionType) -> str:
    """``"an int"``, ``"an int or None"``, ``"an int or a tuple (int, int)"``: for messages."""
    if option.annotation is None:
        return _article(type(option.default).__name__)
    return " or ".join(_word(member) for member in _alternatives(option.annotation))


def _article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _name(annotation: Any) -> str:
    if annotation is Ellipsis:
        return "..."
    if annotation is None or annotation is type(None):
        return "None"
    if typing.get_args(annotation) or typing.get_origin(annotation) is not None:
        return str(annotation).replace("typing.", "").replace("collections.abc.", "")
    return getattr(annotation, "__name__", str(annotation))


def _word(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return f"one of {', '.join(repr(choice) for choice in args)}"
    if annotation is tuple or origin is tuple:
        return f"a tuple ({', '.join(_name(arg) for arg in args)})" if args else "a tuple"
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        return f"a list of {_name(args[0])}" if args else "a list"
    return _article(_name(annotation))


def listing(options: Mapping[str, Any]) -> str:
    """``"steps=50, rule='gauss_legendre'"``: an entry's options with their defaults."""
    return ", ".join(f"{name}={value!r}" for name, value in options.items()) or "none"


def from_text(option: OptionType, text: str, read: Callable[[str], Any]) -> Any:
    """The value a command-line string means for this option.

    ``read`` gives the literal (``64``, ``(16, 8)``, ``'x'``, else the plain string); where
    that does not fit, the option's type decides: a number for ``int`` / ``float``
    (``nan``), ``True`` / ``False`` for ``yes`` / ``no`` / ``on`` / ``off``, None for ``none``,
    a tuple or list for ``16,8``, the text itself for ``str``. What still does not fit is
    returned as read, for :func:`check_option` to refuse.
    """
    value = read(text)
    if option.annotation is None or _verdict(option.annotation, value) is True:
        return value
    for candidate in _readings(text, read, _takes_tuple(option.annotation)):
        if _verdict(option.annotation, candidate) is True:
            return candidate
    return value


def _takes_tuple(annotation: Any) -> bool:
    return any(member is tuple or typing.get_origin(member) is tuple
               for member in _alternatives(annotation))


def _readings(text: str, read: Callable[[str], Any], tuple_first: bool) -> list[Any]:
    """Other readings of ``text``, tried in this order against the option's type (``16,8``:
    a tuple first where the option takes a tuple, else a list)."""
    word = text.strip().lower()
    readings: list[Any] = []
    if word in _NONE_WORDS:
        readings.append(None)
    if word in _BOOL_WORDS:
        readings.append(_BOOL_WORDS[word])
    for number in (int, float):
        with contextlib.suppress(ValueError):
            readings.append(number(text))
    if "," in text:
        items = [read(part.strip()) for part in text.strip("()[] ").split(",") if part.strip()]
        readings += [tuple(items), items] if tuple_first else [items, tuple(items)]
    readings.append(text)
    return readings


def check_option(owner: str, name: str, value: Any, option: OptionType, *,
                 options: Mapping[str, Any], error: type[ConvlensError]) -> Any:
    """``value`` if option ``name`` of ``owner`` takes it, else one clear error line.

    Args:
        owner: The registry entry, for the message (``"smoothgrad"``, ``"deletion:xplique"``).
        name: The option's name.
        value: The value given (a typed value; the CLI converts its strings with
            :func:`from_text` first).
        option: What the option takes (:func:`option_types`).
        options: The entry's options with their defaults (a preset's, where one is used),
            listed in the message.
        error: The exception to raise (``MethodError``, ``MetricError``).

    Raises:
        error: An infinite or NaN number (the wording of
            :func:`convlens.errors.finite_message`), or a value of another type; the message
            names the entry, the option, what was given and what is accepted.
    """
    default = options.get(name, option.default)  # a preset's default, where one is set
    if non_finite(value) or (isinstance(value, str) and not accepts(option, value)
                             and _non_finite_text(value)):
        raise error(finite_message(f"{owner}.{name}", value, default))
    if not accepts(option, value):
        raise error(f"{owner}.{name} takes {describe(option)} (default {default!r}), "
                    f"got {value!r}; its options are: {listing(options)}")
    return value


def _non_finite_text(text: str) -> bool:
    """``"inf"``, ``"-Infinity"``, ``"nan"``: an option that takes no such string is told the
    number is not finite, rather than that a string is the wrong type."""
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False
