"""What a feature visualization maximises: objectives that compose with ``+ - * /``.

An :class:`Objective` maps the activations of one optimisation step to a scalar to
**maximise** (the convention of Lucid, Olah et al. 2017). Penalties (total variation, L1,
blur, diversity) are positive quantities too, so they are *subtracted*::

    from convlens import objectives as obj
    goal = obj.channel("blocks.8", 12) - 1e-2 * obj.diversity("blocks.8")

The optimiser minimises ``-goal``. Each objective declares the layers it reads, so the
render loop hooks exactly those and stops the forward pass after the deepest one.

Every built-in objective is registered (:func:`registered`); the unit tests iterate over
the registry, so a new objective is checked (it must improve under a few optimiser steps)
without editing the tests, as in timm's model registry and Lucent's objective tests.

Layer keys are dotted names as in ``model.named_modules()`` (or the modules themselves);
they are resolved, with an error listing the valid names, when :func:`visualize` starts.
``"LAYER:K"`` (channel K of LAYER) and ``"class:K"`` / ``"class:NAME"`` (the class logit)
are accepted wherever an objective is (:func:`as_objective`).

A custom objective is a function of the :class:`Context` plus the layers it reads::

    patch = Objective(lambda c: c.act("blocks.8")[:, 3, 4:9, 4:9].mean(),
                      layers=["blocks.8"], name="blocks.8:3 centre patch")
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ObjectiveError, TargetError, did_you_mean, unknown_choice

LayerKey = str | nn.Module
LOGITS = "<logits>"
"""The pseudo-layer name under which the model's output (logits) is captured."""

__all__ = [
    "LOGITS",
    "Context",
    "Objective",
    "ObjectiveSpec",
    "as_objective",
    "blur",
    "channel",
    "class_logit",
    "class_probability",
    "direction",
    "direction_neuron",
    "diversity",
    "l1",
    "l2",
    "layer",
    "neuron",
    "registered",
    "total_variation",
]


@dataclass
class Context:
    """What an objective sees at one optimisation step.

    Attributes:
        activations: Layer key -> activation ``(B, C, H, W)`` (or ``(B, C)``), connected to
            the image by autograd; the model's output is under :data:`LOGITS`.
        image: The parameterised image ``(B, 3, H, W)`` in [0, 1], before the robustness
            transforms and the model's normalisation (what regularisers act on).
        labels: Class names, to resolve ``class_logit("tabby")``; may be None.
    """

    activations: Mapping[Any, torch.Tensor]
    image: torch.Tensor
    labels: Sequence[str] | None = None

    def act(self, key: LayerKey) -> torch.Tensor:
        """The activation of ``key`` (a clear error if it was not captured)."""
        try:
            return self.activations[key]
        except KeyError:
            raise ObjectiveError(
                f"layer {key!r} was not captured; objectives must declare the layers they read"
            ) from None

    @property
    def logits(self) -> torch.Tensor:
        return self.act(LOGITS)

    def select(self, index: int) -> Context:
        """The same step seen by batch element ``index`` only (batch dimension kept)."""
        batch = self.image.shape[0]
        if not -batch <= index < batch:
            raise ObjectiveError(
                f"objective asks for batch element {index} but the batch has {batch} image(s); "
                "pass batch= to visualize or use a smaller index"
            )
        index = index % batch
        return Context({k: v[index:index + 1] for k, v in self.activations.items()},
                       self.image[index:index + 1], self.labels)


class Objective:
    """A scalar to maximise, computed from a :class:`Context`; composes with ``+ - * /``.

    Args:
        fn: ``fn(context) -> 0-d tensor``.
        layers: The layer keys ``fn`` reads (:data:`LOGITS` for the model output).
        name: For traces, file names and ``repr``.
        batch: If set, ``fn`` sees only this batch element (as Lucent's ``batch=``).

    Example:
        >>> goal = 0.5 * channel("blocks.8", 3) - channel("blocks.8", 4)
        >>> sorted(goal.layers)
        ['blocks.8']
    """

    def __init__(self, fn: Callable[[Context], torch.Tensor], *, layers: Sequence[Any] = (),
                 name: str = "objective", batch: int | None = None) -> None:
        self.fn = fn
        self.layers: frozenset = frozenset(layers)
        self.name = name
        self.batch = batch

    def __call__(self, context: Context) -> torch.Tensor:
        if self.batch is not None:
            context = context.select(self.batch)
        return self.fn(context)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def on_batch(self, index: int) -> Objective:
        """This objective applied to batch element ``index`` only."""
        return Objective(lambda c: self(c.select(index)), layers=self.layers,
                         name=self.name)

    # --- algebra -------------------------------------------------------------------
    def _combine(self, other: Any, op: Callable, symbol: str, reverse: bool = False
                 ) -> Objective:
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            value = float(other)

            def fn(c: Context) -> torch.Tensor:
                return op(value, self(c)) if reverse else op(self(c), value)

            name = (f"{value:g} {symbol} {_paren(self.name)}" if reverse
                    else f"{self.name} {symbol} {value:g}")
            return Objective(fn, layers=self.layers, name=name)
        if isinstance(other, Objective):
            first, second = (other, self) if reverse else (self, other)
            return Objective(lambda c: op(first(c), second(c)),
                             layers=self.layers | other.layers,
                             name=f"{first.name} {symbol} {_paren(second.name)}")
        return NotImplemented

    def __add__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a + b, "+")

    def __radd__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and other == 0:  # sum([...]) starts from 0
            return self
        return self._combine(other, lambda a, b: a + b, "+", reverse=True)

    def __sub__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a - b, "-", reverse=True)

    def __mul__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            value = float(other)
            return Objective(lambda c: value * self(c), layers=self.layers,
                             name=f"{value:g} * {_paren(self.name)}")
        return self._combine(other, lambda a, b: a * b, "*")

    def __rmul__(self, other: Any) -> Objective:
        return self.__mul__(other)

    def __truediv__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            if other == 0:
                raise ObjectiveError("cannot divide an objective by zero")
            return self * (1.0 / float(other))
        return self._combine(other, lambda a, b: a / b, "/")

    def __neg__(self) -> Objective:
        return Objective(lambda c: -self(c), layers=self.layers, name=f"-{_paren(self.name)}")


def _paren(name: str) -> str:
    return f"({name})" if " " in name else name


# --- registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective factory.

    Attributes:
        name: As users call it (``obj.<name>``).
        kind: ``"activation"`` (a unit to excite), ``"class"`` (an output class) or
            ``"penalty"`` (a quantity to subtract: regulariser or diversity).
        reference: The paper it follows.
        summary: One line.
        factory: The function building the :class:`Objective`.
        parameters: The factory's parameter names.
    """

    name: str
    kind: str
    reference: str
    summary: str
    factory: Callable[..., Objective]
    parameters: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, ObjectiveSpec] = {}
KINDS = ("activation", "class", "penalty")


def _register(kind: str, reference: str, summary: str) -> Callable[[Callable], Callable]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")

    def decorate(factory: Callable[..., Objective]) -> Callable[..., Objective]:
        params = tuple(inspect.signature(factory).parameters)
        _REGISTRY[factory.__name__] = ObjectiveSpec(factory.__name__, kind, reference, summary,
                                                    factory, params)
        return factory

    return decorate


def registered(kind: str | None = None) -> list[ObjectiveSpec]:
    """Every registered objective (optionally of one kind), in registration order."""
    return [spec for spec in _REGISTRY.values() if kind is None or spec.kind == kind]


# --- helpers -------------------------------------------------------------------------
def _layer_label(layer: LayerKey) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__


def _check_channel(act: torch.Tensor, layer: LayerKey, index: int, what: str = "channel"
                   ) -> None:
    if act.dim() < 2:
        raise ObjectiveError(f"layer {_layer_label(layer)!r} has output shape "
                             f"{tuple(act.shape)}; a {what} objective needs (N, C, ...)")
    if not 0 <= index < act.shape[1]:
        raise ObjectiveError(
            f"{what} {index} is out of range for layer {_layer_label(layer)!r}, which has "
            f"{act.shape[1]} channels (valid: 0..{act.shape[1] - 1})"
        )


# --- unit objectives -----------------------------------------------------------------
@_register("activation", "Erhan et al. 2009; Olah et al. 2017 (Feature Visualization)",
           "mean activation of one channel over all positions")
def channel(layer: LayerKey, index: int, *, batch: int | None = None) -> Objective:
    """Excite channel ``index`` of ``layer``: its mean activation over positions.

    Works on 2-D outputs ``(N, C)`` too (a unit of a linear layer).

    Example:
        >>> goal = channel("blocks.8", 12)
    """
    index = _as_index(index, "channel")

    def fn(c: Context) -> torch.Tensor:
        act = c.act(layer)
        _check_channel(act, layer, index)
        return act[:, index].mean()

    return Objective(fn, layers=[layer], name=f"{_layer_label(layer)}:{index}", batch=batch)


def _spatial_position(act: torch.Tensor, layer: Any, x: int | None, y: int | None,
                      objective: str, what: str) -> tuple[int, int]:
    """(row, col) of a neuron in a 4-D activation: given, or the centre; checked."""
    if act.dim() != 4:
        raise ObjectiveError(f"{objective} needs a spatial layer (N, C, H, W); "
                             f"{_layer_label(layer)!r} gives {tuple(act.shape)}")
    height, width = act.shape[2:]
    col = width // 2 if x is None else int(x)
    row = height // 2 if y is None else int(y)
    if not (0 <= col < width and 0 <= row < height):
        raise ObjectiveError(f"{what} x={col}, y={row} is outside layer "
                             f"{_layer_label(layer)!r}'s {height}x{width} map")
    return row, col


@_register("activation", "Olah et al. 2017 (Feature Visualization)",
           "activation of one channel at one spatial position (default: the centre)")
def neuron(layer: LayerKey, index: int, x: int | None = None, y: int | None = None, *,
           batch: int | None = None) -> Objective:
    """Excite one neuron: channel ``index`` of ``layer`` at column ``x``, row ``y``.

    ``x`` and ``y`` default to the centre of the activation map (``w // 2``, ``h // 2``),
    as in Lucid. The neuron's receptive field is small for early layers, so the picture
    shows the pattern in the middle and little elsewhere.
    """
    index = _as_index(index, "channel")

    def fn(c: Context) -> torch.Tensor:
        act = c.act(layer)
        _check_channel(act, layer, index, "neuron channel")
        row, col = _spatial_position(act, layer, x, y, "neuron", "neuron position")
        return act[:, index, row, col].mean()

    where = "" if x is None and y is None else f"@{x},{y}"
    return Objective(fn, layers=[layer], name=f"{_layer_label(layer)}:{index}{where}",
                     batch=batch)


@_register("activation", "Mordvintsev et al. 2015 (DeepDream)",
           "mean squared activation of a whole layer (DeepDream)")
def layer(layer: LayerKey, *, batch: int | None = None) -> Objective:
    """DeepDream: the mean squared activation of every unit of ``layer``."""
    return Objective(lambda c: c.act(layer).pow(2).mean(), layers=[layer],
                     name=f"deepdream {_layer_label(layer)}", batch=batch)


def _unit_vector(vector: Any, channels: int, layer: LayerKey, like: torch.Tensor
                 ) -> torch.Tensor:
    vec = torch.as_tensor(vector, dtype=like.dtype, device=like.device).flatten()
    if vec.numel() != channels:
        raise ObjectiveError(f"direction has {vec.numel()} entries but layer "
                             f"{_layer_label(layer)!r} has {channels} channels")
    norm = vec.norm()
    if norm == 0:
        raise ObjectiveError("direction vector is all zeros")
    return vec / norm


def _direction_score(act: torch.Tensor, unit: torch.Tensor, cossim_pow: float) -> torch.Tensor:
    """Per position: <a, v> (times cos(a, v)^p, cos clamped at 0.1, when p > 0)."""
    shape = (1, -1) + (1,) * (act.dim() - 2)
    dot = (act * unit.view(shape)).sum(dim=1)
    if cossim_pow:
        cos = dot / act.norm(dim=1).clamp_min(1e-8)
        dot = dot * cos.clamp_min(0.1).pow(cossim_pow)
    return dot


@_register("activation", "Olah et al. 2018 (The Building Blocks of Interpretability)",
           "projection of a layer's activations on a vector in channel space")
def direction(layer: LayerKey, vector: Any, *, cossim_pow: float = 0.0,
              batch: int | None = None) -> Objective:
    """Excite a direction in channel space: mean over positions of ``<a(x, y), v / |v|>``.

    ``cossim_pow > 0`` multiplies by the cosine similarity to that power (Lucid's later
    variant, which favours activations pointing the same way over large ones).
    """

    def fn(c: Context) -> torch.Tensor:
        act = c.act(layer)
        return _direction_score(act, _unit_vector(vector, act.shape[1], layer, act),
                                cossim_pow).mean()

    return Objective(fn, layers=[layer], name=f"{_layer_label(layer)}:direction", batch=batch)


@_register("activation", "Olah et al. 2018 (The Building Blocks of Interpretability)",
           "projection on a channel-space vector at one position (default: the centre)")
def direction_neuron(layer: LayerKey, vector: Any, x: int | None = None, y: int | None = None,
                     *, cossim_pow: float = 0.0, batch: int | None = None) -> Objective:
    """:func:`direction` at one spatial position (the centre by default)."""

    def fn(c: Context) -> torch.Tensor:
        act = c.act(layer)
        row, col = _spatial_position(act, layer, x, y, "direction_neuron", "position")
        at = act[:, :, row:row + 1, col:col + 1]
        return _direction_score(at, _unit_vector(vector, act.shape[1], layer, act),
                                cossim_pow).mean()

    return Objective(fn, layers=[layer], name=f"{_layer_label(layer)}:direction@centre",
                     batch=batch)


# --- class objectives ----------------------------------------------------------------
def _class_index(target: int | str, c: Context) -> int:
    classes = c.logits.shape[1]
    if isinstance(target, str):
        labels = list(c.labels or [])
        lowered = [label.lower() for label in labels]
        if target.lower() in lowered:
            return lowered.index(target.lower())
        hint = did_you_mean(target, labels)
        if not labels:
            hint = "; this model has no labels, pass a class index"
        raise TargetError(f"unknown class name {target!r}{hint} (or pass a class index "
                          f"0..{classes - 1})")
    if not 0 <= target < classes:
        raise TargetError(f"class {target} is out of range: the model has {classes} classes "
                          f"(valid: 0..{classes - 1})")
    return target


def _class_target(target: Any) -> int | str:
    if isinstance(target, str):
        return int(target) if target.strip().lstrip("-").isdigit() else target
    return _as_index(target, "class")


@_register("class", "Simonyan et al. 2014; Olah et al. 2017 (Feature Visualization)",
           "the class's logit (pre-softmax score)")
def class_logit(target: int | str, *, batch: int | None = None) -> Objective:
    """Excite an output class: its logit. ``target`` is an index or a label name.

    The logit is the usual choice (Simonyan et al. 2014): maximising the softmax
    probability can be achieved by suppressing the other classes instead.
    """
    target = _class_target(target)
    return Objective(lambda c: c.logits[:, _class_index(target, c)].mean(), layers=[LOGITS],
                     name=f"class:{target}", batch=batch)


@_register("class", "Simonyan et al. 2014",
           "the class's softmax probability")
def class_probability(target: int | str, *, batch: int | None = None) -> Objective:
    """The softmax probability of an output class (index or label name)."""
    target = _class_target(target)
    return Objective(lambda c: c.logits.softmax(dim=1)[:, _class_index(target, c)].mean(),
                     layers=[LOGITS], name=f"p(class:{target})", batch=batch)


# --- penalties ---------------------------------------------------------------------
@_register("penalty", "Mordvintsev et al. 2018; Olah et al. 2017 (Feature Visualization)",
           "mean pairwise cosine similarity of Gram matrices across the batch")
def diversity(layer: LayerKey) -> Objective:
    """A penalty on batch images that look alike in ``layer``'s style (subtract it).

    For each image the Gram matrix of ``layer``'s channels is flattened and L2-normalised;
    the penalty is the mean cosine similarity over all ordered pairs of distinct images
    (0 for a batch of one). Lucid sums over pairs and divides by the batch size; the
    mean keeps a useful weight independent of the batch size (try 1e-2 to 1 times the
    main objective's scale).
    """

    def fn(c: Context) -> torch.Tensor:
        act = c.act(layer)
        batch = act.shape[0]
        if batch < 2:
            return act.new_zeros(())
        flat = act.reshape(batch, act.shape[1], -1)
        grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).reshape(batch, -1), dim=1)
        similarity = grams @ grams.T
        return (similarity.sum() - similarity.diagonal().sum()) / (batch * (batch - 1))

    return Objective(fn, layers=[layer], name=f"diversity {_layer_label(layer)}")


@_register("penalty", "Mahendran & Vedaldi 2015",
           "total variation of the image (mean absolute difference of neighbours)")
def total_variation(*, batch: int | None = None) -> Objective:
    """Total variation of the [0, 1] image: a penalty on high-frequency noise (subtract it)."""

    def fn(c: Context) -> torch.Tensor:
        image = c.image
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
        return dx + dy

    return Objective(fn, name="total_variation", batch=batch)


def _image_or_layer(c: Context, layer: LayerKey | None) -> torch.Tensor:
    return c.image if layer is None else c.act(layer)


@_register("penalty", "Olah et al. 2017 (Feature Visualization)",
           "mean absolute value of the image (or a layer) minus a constant")
def l1(layer: LayerKey | None = None, constant: float = 0.5, *,
       batch: int | None = None) -> Objective:
    """L1 penalty ``mean |t - constant|`` on the image (default, around grey) or a layer."""
    return Objective(lambda c: (_image_or_layer(c, layer) - constant).abs().mean(),
                     layers=[] if layer is None else [layer], name="l1", batch=batch)


@_register("penalty", "Olah et al. 2017 (Feature Visualization)",
           "mean squared value of the image (or a layer) minus a constant")
def l2(layer: LayerKey | None = None, constant: float = 0.5, *,
       batch: int | None = None) -> Objective:
    """L2 penalty ``mean (t - constant)^2`` on the image (default, around grey) or a layer."""
    return Objective(lambda c: (_image_or_layer(c, layer) - constant).pow(2).mean(),
                     layers=[] if layer is None else [layer], name="l2", batch=batch)


def _box_blur(image: torch.Tensor) -> torch.Tensor:
    """3x3 box blur per channel, replicate-padded."""
    channels = image.shape[1]
    kernel = image.new_full((channels, 1, 3, 3), 1.0 / 9.0)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


@_register("penalty", "Nguyen et al. 2015; Olah et al. 2017 (Feature Visualization)",
           "squared distance of the image to its own (fixed) 3x3 blur")
def blur(*, batch: int | None = None) -> Objective:
    """Pull the image towards its blurred self: ``mean (x - stopgrad(blur(x)))^2 / 2``.

    Its gradient is ``x - blur(x)``, so one optimiser step on it is a small blur (the
    penalty form of Lucid's ``blur_input_each_step``). Subtract it.
    """

    def fn(c: Context) -> torch.Tensor:
        image = c.image
        return 0.5 * (image - _box_blur(image.detach())).pow(2).mean()

    return Objective(fn, name="blur", batch=batch)


# --- parsing -------------------------------------------------------------------------
def _as_index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.Tensor)):
        raise ObjectiveError(f"{what} index must be an int, got {value!r}")
    return int(value)


def as_objective(spec: Objective | str) -> Objective:
    """An :class:`Objective`, or the shorthand ``"LAYER:K"`` / ``"class:K"`` / ``"class:NAME"``.

    Example:
        >>> as_objective("blocks.8:12").name
        'blocks.8:12'
    """
    if isinstance(spec, Objective):
        return spec
    if not isinstance(spec, str):
        raise ObjectiveError(
            f"expected an objective (e.g. obj.channel('blocks.8', 3)) or a string like "
            f"'blocks.8:3' or 'class:281', got {type(spec).__name__}"
        )
    head, sep, tail = spec.partition(":")
    if sep and head.strip().lower() == "class":
        if not tail.strip():
            raise ObjectiveError(f"{spec!r}: give a class index or name after 'class:'")
        return class_logit(tail.strip())
    name, sep, index = spec.rpartition(":")
    if not sep or not name or not index.strip().isdigit():
        raise ObjectiveError(
            f"cannot read objective {spec!r}; expected 'LAYER:CHANNEL' (e.g. 'blocks.8:12') "
            "or 'class:INDEX' / 'class:NAME'"
        )
    return channel(name, int(index))


def get(name: str) -> ObjectiveSpec:
    """A registered objective by name; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise ObjectiveError(unknown_choice("objective", name, _REGISTRY))
    return _REGISTRY[name]
