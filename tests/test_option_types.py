"""Option types checked in one place (issue 19, item 3): ``Method.bind`` / ``Metric.bind`` for
library calls and ``--option`` for command-line strings both go through
:func:`convlens.option_types.check_option`, so every registered option round-trips from its
CLI string and from its typed value to the same bound value, and a wrong type fails with the
same words from the library and from the CLI."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_support import TINY, assert_one_error, photo, run
from tiny_models import TinyVGG

import convlens as cl
from convlens.attribution.registry import methods
from convlens.cli._common import parse_method_options
from convlens.cli.evaluate import parse_options
from convlens.errors import ConvlensError, MethodError, MetricError
from convlens.metrics.registry import metrics
from convlens.option_types import OptionType, check_option, from_text, option_types


def _samples(option: OptionType) -> list[Any]:
    """Typed values the option takes, one per judged alternative of its annotation (the
    default where a literal can spell it)."""
    default = option.default
    plain = default is None or isinstance(default, (bool, int, float, str))
    members = typing.get_args(option.annotation) if typing.get_origin(option.annotation) in (
        typing.Union, types.UnionType) else (option.annotation,)
    found: list[Any] = [default] if plain else []
    for member in members:
        origin, args = typing.get_origin(member), typing.get_args(member)
        if member is bool:
            found += [True, False]
        elif member is int:
            found.append(3)
        elif member is float:
            found += [0.5, 2]
        elif member is str:
            found.append("some_text")
        elif member is type(None):
            found.append(None)
        elif origin is tuple:
            found.append((3, 5))
        elif origin is not None and args and args[0] in (int, float, str):
            found.append({int: [3, 5], float: [0.5, 2.0], str: ["fc", "conv1"]}[args[0]])
    return found


def _texts(value: Any, option: OptionType, quoted: bool) -> list[str]:
    """How a user may type ``value``: as a literal, and in the plain form where the option's
    type gives the plain form its meaning (``none`` is the string "none" for an ``object``
    option). ``quoted``: the reader takes Python literals (``--option``'s ``'text'``)."""
    literal = repr if quoted else json.dumps
    if isinstance(value, str):
        return [value, repr(value)] if quoted else [value]
    if option.annotation in (None, object) or not check_takes(option, None) and value is None:
        return [literal(value)]
    if isinstance(value, bool):
        return [literal(value), str(value).lower()]
    if value is None:
        return [literal(value), "none"]
    if isinstance(value, (tuple, list)):
        return [literal(value), ",".join(str(item) for item in value)]
    return [literal(value)]


def _same(a: Any, b: Any) -> bool:
    """Equal, with a tuple and a list of the same items the same sequence."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return a == b and type(a) is type(b)


METHOD_CASES = [(m.name, name, value) for m in methods() for name, option in m.types.items()
                for value in _samples(option)]
METRIC_CASES = [(m.name, name, value) for m in metrics() for name, option in m.types.items()
                for value in _samples(option)]


def test_every_registered_option_has_cases() -> None:
    covered = {(m, n) for m, n, _ in METHOD_CASES} | {(m, n) for m, n, _ in METRIC_CASES}
    every = {(m.name, n) for m in [*methods(), *metrics()] for n in m.options}
    # only options whose default no literal spells (a tensor...) and that no type judges
    assert every - covered == set(), sorted(every - covered)


@pytest.mark.parametrize("method,name,value", METHOD_CASES)
def test_method_options_round_trip_from_cli_string_and_typed_value(method: str, name: str,
                                                                   value: Any) -> None:
    spec = next(m for m in methods() if m.name == method)
    typed = spec.bind({name: value})[name]
    assert _same(typed, value)
    for text in _texts(value, spec.types[name], quoted=True):
        parsed = parse_method_options([f"{method}.{name}={text}"], [method])[method]
        assert _same(spec.bind(parsed)[name], typed), (text, parsed)


@pytest.mark.parametrize("metric,name,value", METRIC_CASES)
def test_metric_options_round_trip_from_cli_string_and_typed_value(metric: str, name: str,
                                                                   value: Any) -> None:
    spec = next(m for m in metrics() if m.name == metric)
    typed = spec.bind({name: value})[name]
    assert _same(typed, value)
    for text in _texts(value, spec.types[name], quoted=False):
        parsed = parse_options([f"{metric}.{name}={text}"], "--option", [metric])[metric]
        assert _same(spec.bind(parsed)[name], typed), (text, parsed)


def check_takes(option: OptionType, value: Any) -> bool:
    try:
        check_option("m", "o", value, option, options={}, error=MethodError)
    except MethodError:
        return False
    return True


# every option that a command-line string can get wrong: one that takes no string (any text
# is a valid value of a ``str`` option: ``--option lrp.composite=2.5`` is the name "2.5")
WRONG = [(m.name, name, "many") for m in methods() for name, option in m.types.items()
         if not check_takes(option, "many")]


@pytest.mark.parametrize("method,name,value", WRONG)
def test_a_wrong_type_fails_the_same_way_from_library_and_cli(method: str, name: str,
                                                              value: Any) -> None:
    spec = next(m for m in methods() if m.name == method)
    with pytest.raises(MethodError) as library:
        spec.bind({name: value})
    message = str(library.value)
    assert message.startswith(f"{method}.{name} takes "), message
    assert f"got {value!r}" in message and "its options are: " in message
    raw = f"{method}.{name}={value}"
    with pytest.raises(MethodError) as cli:
        parse_method_options([raw], [method])
    # the CLI's list of what --option may set also names a CAM's layer (cl.attribute's layer=)
    listed = ", layer=None" if spec.needs_layer else ""
    assert str(cli.value) == f"--option {raw!r}: {message}{listed}"


def test_wrong_types_are_refused_by_the_library_entry_points() -> None:
    # before issue 19 item 3, Method.bind checked names only: samples="4" ran into torch
    with pytest.raises(MethodError, match=r"^smoothgrad\.samples takes an int \(default 50\), "
                                          r"got '4'; its options are: samples=50"):
        cl.attribute(TinyVGG().eval(), torch.rand(1, 3, 8, 8), "smoothgrad", samples="4")
    with pytest.raises(MetricError, match=r"^deletion:xplique\.steps takes an int or None "
                                          r"\(default 10\), got 2\.5"):
        cl.metrics.get_metric("deletion").bind({"steps": 2.5}, preset="xplique")
    with pytest.raises(MethodError, match=r"occlusion\.window takes an int or a tuple "
                                          r"\(int, int\) \(default 16\), got \(1, 2, 3\)"):
        cl.attribute(TinyVGG().eval(), torch.rand(1, 3, 8, 8), "occlusion", window=(1, 2, 3))


def test_the_cli_prints_the_library_message_as_one_line(tmp_path: Path) -> None:
    spec = next(m for m in methods() if m.name == "smoothgrad")
    with pytest.raises(MethodError) as library:
        spec.bind({"samples": "many"})
    result = run("explain", str(photo(tmp_path / "p.png")), *TINY, "--method", "smoothgrad",
                 "--out", str(tmp_path / "out"), "--option", "smoothgrad.samples=many")
    assert_one_error(result, 2, f"error: --option 'smoothgrad.samples=many': {library.value}")
    # evaluate's --option goes through the same parser (tests/cli/test_metric_options.py)


@pytest.mark.parametrize("annotation,text,expected", [
    (int, "7", 7), (float, "nan", "finite"), (bool, "yes", True), (bool, "off", False),
    (int | None, "null", None), (tuple[int, int], "16,8", (16, 8)),
    (typing.Sequence[float], "10,20.5", [10, 20.5]), (str, "1", "1"),
    (typing.Literal["a", "b"], "b", "b"), (typing.Literal["a", "b"], "c", "error"),
    (typing.Optional[int], "3", 3),  # noqa: UP045  (Optional spelled the old way)
])
def test_strings_convert_by_the_annotation(annotation: Any, text: str, expected: Any) -> None:
    from convlens.cli._common import literal_value

    option = OptionType(None, annotation)
    value = from_text(option, text, literal_value)
    if expected in ("finite", "error"):
        with pytest.raises(ConvlensError, match="finite number" if expected == "finite"
                           else r"takes one of 'a', 'b'"):
            check_option("m", "o", value, option, options={"o": None}, error=MethodError)
    else:
        assert _same(check_option("m", "o", value, option, options={}, error=MethodError),
                     expected)


def test_an_unresolvable_annotation_is_not_judged() -> None:
    def compute(problem: object, *, x: NotDefinedAnywhere = 1) -> None:  # noqa: F821
        """x's annotation names a type imported only for type checkers."""

    (option,) = option_types(compute, {"x": 1}).values()
    assert check_option("m", "x", "anything", option, options={}, error=MethodError)
