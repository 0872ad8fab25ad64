"""The method registry: :class:`Method`, :func:`register` and the lookup (a leaf).

A method is a function ``compute(problem, **options) -> Tensor`` registered once with its
family, the space its output lives in, its options with defaults and the paper it follows.
The CLI, ``explain``, the demo page and the conformance tests all read this registry, so a
newly registered method is offered and tested everywhere at once.

This module imports nothing of the family modules (as timm's ``_registry.py``): the families
import :func:`register` from here, and the package (``convlens/attribution/__init__.py``)
imports every family once, so any lookup through ``convlens.attribution`` sees them all.
``attribution/core.py`` re-exports these names (docs/architecture.md, "Layers").

:meth:`Method.to_map` is the one map reduction: every consumer of a method's raw output
(presentation, the audit's stored maps and scores, the metrics, the randomisation tests)
turns it into per-pixel maps through it, so they all see the same map.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from convlens.errors import MethodError, unknown_choice
from convlens.option_types import OptionType, check_option, option_types

FAMILIES = ("gradient", "cam", "perturbation", "relevance")
CHANNEL_REDUCTIONS = ("sum", "max_abs")


def reduce_channels(attribution: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W)``: sum over channels, or max of absolute values.

    A single ``(C, H, W)`` map is taken as a batch of one. The dtype is kept, so a caller
    that wants float64 maps converts before reducing.
    """
    if attribution.dim() == 3:
        attribution = attribution.unsqueeze(0)
    if reduction == "max_abs":
        return attribution.abs().amax(dim=1)
    if reduction == "sum":
        return attribution.sum(dim=1)
    raise MethodError(f"unknown channel reduction {reduction!r}; valid: "
                      f"{', '.join(CHANNEL_REDUCTIONS)} (set on the method's registration)")


def remove_offset(maps: torch.Tensor) -> torch.Tensor:
    """Subtract each ``(N, H, W)`` map's minimum (for methods whose maps carry an offset)."""
    return maps - maps.flatten(1).amin(dim=1).view(-1, 1, 1)


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``(N, h, w)`` maps to ``size`` = (H, W), dtype kept; unchanged
    when already that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear",
                         align_corners=False).squeeze(1)


@dataclass(frozen=True)
class Method:
    """A registered attribution method.

    Attributes:
        name: Registry key, as users type it.
        family: One of :data:`FAMILIES`.
        space: ``"input"`` (output shaped like x), ``"layer"`` (``(N, 1, h, w)``) or
            ``"concepts"`` (``(N, K, H, W)``: one input-sized map per concept, ``crp``).
        options: Option names with their defaults.
        reference: The paper the implementation follows.
        summary: One line saying what the map means.
        compute: ``compute(problem, **options)`` for ordinary methods.
        combine: ``combine(activations, gradients, **options)`` for gradient-weighted CAMs.
        signed: Whether the raw map carries a meaningful sign (presentation uses it).
        channel_reduction: How :meth:`to_map` turns (C, H, W) into (H, W): ``"max_abs"`` or
            ``"sum"``.
        offset: The map carries an arbitrary constant offset (RISE's is the mean class
            probability); :meth:`to_map` subtracts each map's minimum.
        needs_class_index: Why the method needs a class index (e.g. it weighs by the
            class's softmax probability over all classes), or ``None`` when it explains any
            score; score-function targets are refused with this reason.
        types: What each option takes, from the registered function's annotations
            (:func:`convlens.option_types.option_types`); :meth:`bind` checks values by it.
    """

    name: str
    family: str
    space: str
    options: Mapping[str, Any]
    reference: str
    summary: str
    compute: Callable[..., torch.Tensor] | None = None
    combine: Callable[..., torch.Tensor] | None = None
    signed: bool = False
    channel_reduction: str = "sum"
    offset: bool = False
    needs_class_index: str | None = None
    types: Mapping[str, OptionType] = field(default_factory=dict, compare=False, repr=False)

    @property
    def needs_layer(self) -> bool:
        return self.space in ("layer", "concepts")

    @property
    def pixel_space(self) -> bool:
        """Its maps are input-sized (``input`` and ``concepts`` spaces)."""
        return self.space in ("input", "concepts")

    def bind(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The full option set: defaults overridden by ``options``.

        Unknown names, values of a type the option does not take (by the registered
        function's annotations) and infinite or NaN numbers are refused with one line
        naming the method, the option, the value and what it takes
        (:func:`convlens.option_types.check_option`, which the CLI's ``--option`` uses too).
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise MethodError(
                f"method {self.name!r} has no option {unknown[0]!r}; its options are: {valid}"
            )
        types = self.types or option_types(self.compute or self.combine, self.options)
        for name, value in options.items():
            check_option(self.name, name, value, types[name], options=self.options,
                         error=MethodError)
        return {**self.options, **options}

    def to_map(self, raw: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """The method's raw output -> per-pixel maps ``(N, H, W)``: the one map reduction.

        Channels (colour channels of an input-space map, concepts of a ``concepts`` map) are
        reduced by :attr:`channel_reduction`, an arbitrary offset (:attr:`offset`, RISE) is
        removed by subtracting each map's minimum, and with ``size`` the maps are resized
        bilinearly (a layer map to the input). No sign is applied and nothing is normalised:
        that is each consumer's choice. The dtype is kept (convert ``raw`` first for float64).

        Example:
            >>> import convlens as cl, torch
            >>> cl.get_method("saliency").to_map(torch.ones(2, 3, 4, 4)).shape
            torch.Size([2, 4, 4])
        """
        maps = reduce_channels(raw, self.channel_reduction)
        if self.offset:
            maps = remove_offset(maps)
        return maps if size is None else upsample_maps(maps, size)


_REGISTRY: dict[str, Method] = {}


def register(name: str, *, family: str, space: str = "input", reference: str, summary: str,
             signed: bool = False, channel_reduction: str = "sum",
             gradient_cam: bool = False, offset: bool = False,
             needs_class_index: str | None = None) -> Callable[[Callable], Callable]:
    """Class-free registration decorator; options and defaults come from the signature.

    The decorated function's keyword-only parameters are the method's options, so the
    defaults are written once, where they are used.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}")

    def decorate(fn: Callable) -> Callable:
        options = {
            p.name: p.default
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        _REGISTRY[name] = Method(
            name=name, family=family, space=space, options=options, reference=reference,
            summary=summary, signed=signed, channel_reduction=channel_reduction, offset=offset,
            needs_class_index=needs_class_index,
            compute=None if gradient_cam else fn, combine=fn if gradient_cam else None,
            types=option_types(fn, options),
        )
        return fn

    return decorate


def methods(family: str | None = None) -> list[Method]:
    """Every registered method (optionally of one family), in registration order."""
    return [m for m in _REGISTRY.values() if family is None or m.family == family]


def get_method(name: str) -> Method:
    """Look a method up by name; an unknown name lists the valid ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise MethodError(unknown_choice("method", name, _REGISTRY))
    return _REGISTRY[name]
