"""LRP conventions for torch functions called outside rule-covered modules.

A residual ``out + identity``, a ``torch.flatten`` or an ``F.relu`` in a ``forward`` is
invisible to module hooks. During the LRP forward pass a ``TorchFunctionMode`` hands every
torch function called at that level (not inside a Conv, ReLU... whose rule covers it) to
:func:`apply_function_rule`, which applies the same conventions as for modules:

* routing (reshapes, indexing, concatenation, padding, max pooling, dropout): the function's
  own backward routes relevance;
* activations (``relu``, ``relu6``, ``leaky_relu``...): relevance passes unchanged;
* sums (``+``, ``+=``, ``torch.add``, ``-``): each term gets ``c_i t_i / stab(z)`` of the
  relevance (the ``norm`` rule of a sum, as Zennit's ``Sum`` module with ``Norm``), a constant
  term (a number, a tensor off the relevance path) absorbs its share;
* linear maps without weights (``mean``, ``sum``, average pooling, multiplication or
  division by a number): the ``norm`` rule;
* anything else whose result is on the relevance path, or which modifies such a tensor in
  place, raises UnsupportedModelError naming the function and the module whose forward
  called it. Functions off the relevance path (shapes, masks, constants) run untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from convlens.attribution.relevance import graph as G
from convlens.attribution.relevance import rules as R
from convlens.errors import UnsupportedModelError


class PropagationView(Protocol):
    """What these rules use of :class:`~convlens.attribution.relevance.propagation.Propagation`.

    A protocol, not an import, so that ``propagation.py`` imports this module and not the
    reverse (no import cycle: docs/architecture.md, "Layers and the direction data flows").
    """

    def resolve(self, t: Any) -> Any:
        """``t`` itself, or, for a guard, the built rule graph of its layer."""

    def is_nonnegative(self, t: object) -> bool:
        """Whether ``t`` is known to hold no negative value."""

    def mark_nonnegative(self, t: object) -> None:
        """Record that ``t`` holds no negative value."""

    def where(self) -> tuple[str, torch.nn.Module]:
        """The innermost module whose forward is being interpreted (for messages)."""


_ROUTING = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "permute", "transpose", "t", "movedim", "contiguous", "clone", "__getitem__", "narrow",
    "select", "chunk", "split", "tensor_split", "unbind", "cat", "concat", "concatenate",
    "stack", "to", "float", "double", "half", "bfloat16", "type_as", "pad", "flip", "roll",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "max_pool1d", "max_pool2d",
    "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
})
_ACTIVATIONS = frozenset({
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "selu", "selu_", "celu", "celu_", "gelu", "silu", "hardswish", "mish", "softplus",
    "prelu",
})
_NONNEGATIVE_ACTIVATIONS = frozenset({"relu", "relu_", "relu6"})
_ADDS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})
_SUBS = frozenset({"sub", "sub_", "__sub__", "__isub__"})
_INPLACE_SUMS = frozenset({"add_", "__iadd__", "sub_", "__isub__"})
_WEIGHTLESS_LINEAR = frozenset({
    "mean", "sum", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d",
})
_SCALINGS = frozenset({"mul", "__mul__", "__rmul__", "div", "__truediv__", "true_divide"})


def tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nest of tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in its nest of tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(item, fn) for item in obj)
    if isinstance(obj, list):
        return [map_tensors(item, fn) for item in obj]
    if isinstance(obj, dict):
        return {key: map_tensors(item, fn) for key, item in obj.items()}
    return obj


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _on_path(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def apply_function_rule(p: PropagationView, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` under its LRP convention (see the module docstring)."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # attribute access: shape, dtype, .T ...
        return _attribute(p, func, args, kwargs)
    if name in _ROUTING:
        return _routing(p, func, name, args, kwargs)
    if name in _ACTIVATIONS:
        return _activation(p, func, name, args, kwargs)
    if name in _ADDS or name in _SUBS:
        return _sum(p, func, name, args, kwargs)
    if name in _WEIGHTLESS_LINEAR or (name in _SCALINGS and _scaled_by_number(args, kwargs)):
        return _weightless_linear(p, func, args, kwargs)
    return _unknown(p, func, args, kwargs)


def _attribute(p: PropagationView, func: Callable, args: tuple, kwargs: dict) -> Any:
    out = func(*args, **kwargs)
    if any(_on_path(t) for t in tensors(out)):  # a view such as .T: route like a reshape
        out = func(*map_tensors(args, p.resolve), **map_tensors(kwargs, p.resolve))
    return out


def _routing(p: PropagationView, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
    args, kwargs = map_tensors(args, p.resolve), map_tensors(kwargs, p.resolve)
    out = func(*args, **kwargs)
    inputs = list(tensors((args, kwargs)))
    if inputs and all(p.is_nonnegative(t) for t in inputs) and _keeps_sign(name, args, kwargs):
        for t in tensors(out):
            p.mark_nonnegative(t)
    return out


def _keeps_sign(name: str, args: tuple, kwargs: dict) -> bool:
    if name != "pad":
        return True
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    return value is None or (_is_number(value) and value >= 0)


def _activation(p: PropagationView, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
    x = p.resolve(args[0]) if args else None
    if not _on_path(x):
        return func(*args, **kwargs)
    detached = x.detach()
    out = func(detached, *args[1:], **kwargs)
    if out is detached:  # applied in place: x's storage holds the result already
        out = G.PassInPlace.apply(x)
    else:
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            return _unknown(p, func, args, kwargs)
        out = G.Pass.apply(x, [out])
    if name in _NONNEGATIVE_ACTIVATIONS:
        p.mark_nonnegative(out)
    return out


def _sum(p: PropagationView, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
    if len(args) == 2 and set(kwargs) <= {"alpha"}:
        a, b = args
    elif len(args) == 1 and set(kwargs) <= {"other", "alpha"} and "other" in kwargs:
        a, b = args[0], kwargs["other"]
    else:
        return _unknown(p, func, args, kwargs)
    alpha = kwargs.get("alpha", 1)
    a, b = p.resolve(a), p.resolve(b)
    if not (_on_path(a) or _on_path(b)):
        return func(*map_tensors(args, p.resolve), **map_tensors(kwargs, p.resolve))
    if not (_is_number(alpha) and all(isinstance(t, torch.Tensor) or _is_number(t)
                                      for t in (a, b))):
        return _unknown(p, func, args, kwargs)
    coefficient_b = -alpha if name in _SUBS else alpha
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in (a, b)]
    inplace = name in _INPLACE_SUMS
    if inplace:
        if not _on_path(a):
            return _unknown(p, func, args, kwargs)
        value = (torch.sub if name in _SUBS else torch.add)(*detached, alpha=alpha)
    else:
        value = func(*detached, **kwargs)
    terms, coefficients = [], []
    for t, c in ((a, 1.0), (b, coefficient_b)):
        if _on_path(t):
            terms.append(t)
            coefficients.append(float(c))
    return G.Sum.apply([value, inplace], tuple(coefficients), *terms)


def _scaled_by_number(args: tuple, kwargs: dict) -> bool:
    return len(args) == 2 and not kwargs and _is_number(args[1])


def _weightless_linear(p: PropagationView, func: Callable, args: tuple, kwargs: dict) -> Any:
    x = p.resolve(args[0]) if args else None
    if any(_on_path(t) for t in tensors((args[1:], kwargs))):
        return _unknown(p, func, args, kwargs)  # e.g. a product of two activations
    if not _on_path(x):
        return func(x, *args[1:], **kwargs)
    z = func(G.InputTimes.apply(x, [x]), *args[1:], **kwargs)
    return G.Relay.apply([z.detach()], ((1.0, None, R.STABILISER),), z)


def _unknown(p: PropagationView, func: Callable, args: tuple, kwargs: dict) -> Any:
    versions = [(t, t._version) for t in tensors((args, kwargs)) if t.requires_grad]
    out = func(*args, **kwargs)
    modified = any(t._version != version for t, version in versions)
    if modified or any(_on_path(t) for t in tensors(out)):
        raise UnsupportedModelError(_function_message(p, func, modified))
    return out


def _function_message(p: PropagationView, func: Callable, modified: bool) -> str:
    name, module = p.where()
    owner = getattr(func, "__qualname__", "").split(".")[0]
    label = getattr(func, "__name__", repr(func))
    if owner in ("TensorBase", "Tensor"):
        label = f"Tensor.{label}"
    elif not label.startswith("torch."):
        label = f"{getattr(func, '__module__', None) or 'torch'}.{label}"
    kind = type(module).__name__
    place = f"the forward of '{name}' ({kind})" if name else f"the model's forward ({kind})"
    what = "modifies a tensor on the relevance path in place" if modified else (
        "has no LRP rule")
    fix = (f"give '{name}' a rule for this call, rules={{'{name}': 'pass'}} (relevance passes "
           "unchanged; equal input and output shapes), 'gradient' (its own backward) or "
           "'epsilon' (it is a linear map), or register one for its type with "
           f"convlens.attribution.relevance.register_rule({kind}, ...)") if name else (
        "replace the call by a module (e.g. nn.ReLU() instead of F.relu) so that a rule "
        "can be given to it")
    return (f"{label}, called in {place}, {what}: LRP would have to guess how relevance "
            f"flows through it. To fix: {fix}")
