"""The metric registry: :class:`Metric`, :func:`register_metric` and the lookup (a leaf).

A metric is a pure function ``fn(model, x, maps_or_method, target=None, **options) -> Scores``
registered once with its family, its options with defaults (the keyword-only parameters of
the function), the paper it follows and its presets (:mod:`convlens.metrics.presets`).

This module imports nothing of the family modules: they import :func:`register_metric` from
here, and the package (``convlens/metrics/__init__.py``) imports every family once, so any
lookup through ``convlens.metrics`` sees them all. ``metrics/core.py`` re-exports these names
(docs/architecture.md, "Layers").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from convlens.errors import MetricError, unknown_choice
from convlens.metrics.presets import PRESETS
from convlens.option_types import OptionType, check_option, option_types

FAMILIES = ("faithfulness", "robustness", "randomisation", "complexity")

@dataclass(frozen=True)
class Metric:
    """A registered evaluation metric.

    Attributes:
        name: Registry key, as users type it.
        family: One of :data:`FAMILIES`.
        needs: ``"maps"`` (scores given maps) or ``"method"`` (re-runs the method).
        options: Option names with their defaults (the paper's, see ``reference``).
        presets: Named option sets where the field disagrees (``{"rise": {...}}``).
        reference: The paper the definition follows.
        summary: One line saying what the score means.
        higher_is_better: Direction of the score, for the ranking.
        compute: The functional core.
        raw_maps: The metric takes the raw ``(N, C, H, W)`` attribution (infidelity's
            inner product), not the 2-D presentation map.
        types: What each option takes, from the function's annotations
            (:func:`convlens.option_types.option_types`); :meth:`bind` checks values by it.
    """

    name: str
    family: str
    needs: str
    options: Mapping[str, Any]
    presets: Mapping[str, Mapping[str, Any]]
    reference: str
    summary: str
    higher_is_better: bool
    compute: Callable[..., Any]  # returns convlens.metrics.core.Scores
    raw_maps: bool = False
    types: Mapping[str, OptionType] = field(default_factory=dict, compare=False, repr=False)

    def bind(self, options: Mapping[str, Any] | None = None, preset: str | None = None
             ) -> dict[str, Any]:
        """Defaults, overridden by the preset's options, overridden by ``options``.

        Unknown names, values of a type the option does not take and infinite or NaN
        numbers are refused as ``Method.bind`` refuses them
        (:func:`convlens.option_types.check_option`).
        """
        options = dict(options or {})
        if preset is not None and preset not in self.presets:
            raise MetricError(
                f"metric {self.name!r} has no preset {preset!r}; its presets are: "
                f"{', '.join(self.presets) or 'none'}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise MetricError(
                f"metric {self.name!r} has no option {unknown[0]!r}; its options are: {valid}")
        defaults = {**self.options, **(self.presets[preset] if preset else {})}
        types = self.types or option_types(self.compute, self.options)
        owner = self.name if preset is None else f"{self.name}:{preset}"
        for name, value in options.items():
            check_option(owner, name, value, types[name], options=defaults, error=MetricError)
        return {**defaults, **options}


_REGISTRY: dict[str, Metric] = {}


def register_metric(name: str, *, family: str, needs: str, reference: str, summary: str,
                    higher_is_better: bool, raw_maps: bool = False,
                    presets: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registration decorator; options and defaults come from the keyword-only parameters.

    ``presets`` (``{"rise": {"step": 224}}``) are the metric's named option sets, written in
    its own file; the built-ins' are in :mod:`convlens.metrics.presets`.
    """
    if family not in FAMILIES or needs not in ("maps", "method"):
        raise ValueError(f"family must be one of {FAMILIES}, needs 'maps' or 'method'")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        options = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON}
        named = {**PRESETS.get(name, {}), **(presets or {})}
        for preset, values in named.items():
            bad = set(values) - set(options)
            if bad:
                raise ValueError(f"preset {name}:{preset} sets unknown options {sorted(bad)}")
        _REGISTRY[name] = Metric(name=name, family=family, needs=needs, options=options,
                                 presets=named, reference=reference, summary=summary,
                                 higher_is_better=higher_is_better, compute=fn,
                                 raw_maps=raw_maps, types=option_types(fn, options))
        return fn

    return decorate


# Keyword arguments of method-based metrics that describe the method, not the metric.
_COMMON = ("layer", "method_options", "maps")


def metrics(family: str | None = None) -> list[Metric]:
    """Every registered metric (optionally of one family), in registration order."""
    found = [m for m in _REGISTRY.values() if family is None or m.family == family]
    return sorted(found, key=lambda m: FAMILIES.index(m.family))  # stable: registration order


def get_metric(name: str) -> Metric:
    """Look a metric up by name; an unknown name lists the valid ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise MetricError(unknown_choice("metric", name, [m.name for m in metrics()]))
    return _REGISTRY[name]
