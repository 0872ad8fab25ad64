"""Find a network's activations during one call and give them a different backward rule.

Guided backpropagation, DeconvNet and DeepLIFT all keep the forward pass as it is and
change what flows backwards through the nonlinearities. This module finds those
nonlinearities and swaps their backward for the duration of one ``with`` block.

How they are found: a :class:`torch.overrides.TorchFunctionMode` sees every torch function
the forward pass calls. ``nn.ReLU.forward`` calls ``F.relu``, ``nn.ReLU6`` calls
``F.hardtanh(x, 0, 6)``, ``nn.LeakyReLU`` calls ``F.leaky_relu``, so the mode sees module
activations *and* functional ones (``F.relu``, ``torch.relu``, ``x.relu_()`` ...) that module
hooks would miss. Peers hook ``nn.ReLU`` modules only and silently return the plain gradient
for functional ReLUs and for ReLU6 (Captum's GuidedBackprop, Deconvolution and DeepLift).
Intercepting the call, not the module, also means:

- nothing is registered on the user's model (no hook, no attribute), and the mode is popped
  in ``finally``: the model leaves exactly as it came;
- a module called twice in one forward (torchvision's ResNet blocks) is simply two calls;
- in-place activations stay in place (a custom autograd Function that marks its input
  dirty), so code that relies on the side effect (``x.relu_()`` without assignment) runs
  as written; the information the backward rule needs is taken before the overwrite.

What is not seen: code compiled away from Python (TorchScript archives, ``torch.compile``).
Callers refuse a model in which nothing was found rather than return the plain gradient.

Recognised calls. *Rectifiers* (the ReLU family): ``relu``/``relu_`` (function, method,
``F.relu``), ``F.relu6``, ``F.hardtanh`` with ``min_val == 0`` (that is how ``nn.ReLU6``
runs; other hardtanh ranges are left alone), ``F.leaky_relu``/``leaky_relu_``. *Smooth
elementwise* nonlinearities (used by DeepLIFT only): sigmoid, tanh, SiLU, GELU, ELU,
Softplus, Hardswish, Hardsigmoid, Mish. *Max pooling* (DeepLIFT only): ``F.max_pool1d/2d/3d``
and ``F.adaptive_max_pool1d/2d/3d`` without ``return_indices``. ``torch.clamp`` is not
treated as an activation (it is used for too many other things).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from convlens.errors import UnsupportedModelError

RECTIFIER, SMOOTH, MAXPOOL = "rectifier", "smooth", "maxpool"
RULES = ("gradient", "guided", "deconvnet")


# ---- recognising a call -----------------------------------------------------------------

@dataclass
class Call:
    """One intercepted activation call, parsed.

    Attributes:
        kind: :data:`RECTIFIER`, :data:`SMOOTH` or :data:`MAXPOOL`.
        x: The input tensor.
        inplace: Whether the call overwrites ``x``.
        apply: The out-of-place function of ``x`` (for max pooling: returns values and
            indices).
        original: Runs the call exactly as the model made it.
        high: Rectifiers: upper clip (ReLU6: 6; ReLU: inf).
        slope: Rectifiers: slope for negative inputs (LeakyReLU; 0 otherwise).
    """

    kind: str
    x: torch.Tensor
    inplace: bool
    apply: Callable[[torch.Tensor], Any]
    original: Callable[[], Any]
    high: float = math.inf
    slope: float = 0.0

    def apply_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """Overwrite ``x`` with the activation (a fused in-place kernel for rectifiers)."""
        if self.kind == RECTIFIER:
            if self.slope:
                return F.leaky_relu_(x, self.slope)
            if math.isinf(self.high):
                return torch.relu_(x)
            return F.hardtanh_(x, 0.0, self.high)
        return x.copy_(self.apply(x))


def _rectify(x: torch.Tensor, high: float, slope: float) -> torch.Tensor:
    if slope:
        return F.leaky_relu(x, slope)
    return torch.relu(x) if math.isinf(high) else F.hardtanh(x, 0.0, high)


def _rectifier_derivative(x: torch.Tensor, high: float, slope: float) -> torch.Tensor:
    """The derivative torch itself uses: 1 inside, ``slope`` for x <= 0, 0 at x >= high."""
    inside = x > 0
    if not math.isinf(high):
        inside &= x < high
    derivative = inside.to(x.dtype)
    if slope:
        derivative += slope * (x <= 0).to(x.dtype)
    return derivative


@dataclass(frozen=True)
class _Spec:
    kind: str
    params: tuple[tuple[str, Any], ...] = ()  # parameters after the input, in positional order
    always_inplace: bool = False
    high: float = math.inf                     # rectifiers: fixed upper clip (relu6)
    build: Callable[..., Any] | None = None    # smooth: (**params) -> out-of-place function
    pool: tuple[int, Callable] | None = None   # max pooling: (spatial dims, *_with_indices)


def _bind(spec: _Spec, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    values = {name: args[i + 1] if len(args) > i + 1 else kwargs.get(name, default)
              for i, (name, default) in enumerate(spec.params)}
    return x, values


_INPLACE = (("inplace", False),)
_CLIP = (("min_val", -1.0), ("max_val", 1.0))
_SPECS: dict[Any, _Spec] = {}


def _add(funcs: tuple, spec: _Spec) -> None:
    for func in funcs:
        _SPECS[func] = spec


_add((F.relu,), _Spec(RECTIFIER, _INPLACE))
_add((torch.relu, torch.Tensor.relu), _Spec(RECTIFIER))
_add((torch.relu_, torch.Tensor.relu_), _Spec(RECTIFIER, always_inplace=True))
_add((F.relu6,), _Spec(RECTIFIER, _INPLACE, high=6.0))
_add((F.hardtanh,), _Spec(RECTIFIER, _CLIP + _INPLACE))
_add((F.hardtanh_,), _Spec(RECTIFIER, _CLIP, always_inplace=True))
_add((F.leaky_relu,), _Spec(RECTIFIER, (("negative_slope", 0.01),) + _INPLACE))
_add((F.leaky_relu_,), _Spec(RECTIFIER, (("negative_slope", 0.01),), always_inplace=True))

for _plain, _inplace, _fn in ((torch.sigmoid, torch.sigmoid_, torch.sigmoid),
                              (torch.tanh, torch.tanh_, torch.tanh)):
    _add((_plain, getattr(torch.Tensor, _plain.__name__), getattr(F, _plain.__name__)),
         _Spec(SMOOTH, build=lambda _f=_fn: _f))
    _add((_inplace, getattr(torch.Tensor, _inplace.__name__)),
         _Spec(SMOOTH, always_inplace=True, build=lambda _f=_fn: _f))
for _fn in (F.silu, F.hardswish, F.hardsigmoid, F.mish):
    _add((_fn,), _Spec(SMOOTH, _INPLACE, build=lambda _f=_fn: _f))
_add((F.elu,), _Spec(SMOOTH, (("alpha", 1.0),) + _INPLACE,
                     build=lambda alpha: partial(F.elu, alpha=alpha)))
_add((F.elu_,), _Spec(SMOOTH, (("alpha", 1.0),), always_inplace=True,
                      build=lambda alpha: partial(F.elu, alpha=alpha)))
_add((F.softplus,), _Spec(SMOOTH, (("beta", 1.0), ("threshold", 20.0)),
                          build=lambda beta, threshold: partial(F.softplus, beta=beta,
                                                                threshold=threshold)))
_add((F.gelu,), _Spec(SMOOTH, (("approximate", "none"),),
                      build=lambda approximate: partial(F.gelu, approximate=approximate)))

_POOL_PARAMS = (("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1),
                ("ceil_mode", False), ("return_indices", False))
_ADAPTIVE_PARAMS = (("output_size", None), ("return_indices", False))
for _dims in (1, 2, 3):
    _add((getattr(F, f"max_pool{_dims}d"),),
         _Spec(MAXPOOL, _POOL_PARAMS, pool=(_dims, getattr(F, f"max_pool{_dims}d_with_indices"))))
    _add((getattr(F, f"adaptive_max_pool{_dims}d"),),
         _Spec(MAXPOOL, _ADAPTIVE_PARAMS,
               pool=(_dims, getattr(F, f"adaptive_max_pool{_dims}d_with_indices"))))


def parse_call(func: Any, args: tuple, kwargs: dict) -> Call | None:
    """The :class:`Call` for a recognised activation, or None for anything else."""
    spec = _SPECS.get(func)
    if spec is None:
        return None
    x, values = _bind(spec, args, kwargs)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    inplace = spec.always_inplace or bool(values.pop("inplace", False))

    def original() -> Any:
        return func(*args, **kwargs)

    if spec.kind == RECTIFIER:
        high = spec.high
        if "min_val" in values:                       # hardtanh: only the ReLU-like range
            if float(values["min_val"]) != 0.0 or float(values["max_val"]) <= 0.0:
                return None
            high = float(values["max_val"])
        slope = float(values.get("negative_slope", 0.0))
        return Call(RECTIFIER, x, inplace, partial(_rectify, high=high, slope=slope), original,
                    high=high, slope=slope)
    if spec.kind == SMOOTH:
        return Call(SMOOTH, x, inplace, spec.build(**values), original)
    dims, with_indices = spec.pool
    if values.pop("return_indices") or x.dim() != dims + 2:
        return None  # the model uses the indices, or an unbatched input: left alone
    return Call(MAXPOOL, x, False, partial(with_indices, **values), original)


# ---- the interception itself ------------------------------------------------------------

@dataclass
class Seen:
    """What one intercepted forward pass found, by kind."""

    counts: dict[str, int] = field(default_factory=lambda: {RECTIFIER: 0, SMOOTH: 0, MAXPOOL: 0})


class _Interceptor(TorchFunctionMode):
    """Routes recognised calls of the given kinds to ``handler``; everything else runs as is."""

    def __init__(self, kinds: tuple[str, ...], handler: Callable[[Call], Any]) -> None:
        super().__init__()
        self.kinds = kinds
        self.handler = handler
        self.seen = Seen()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = parse_call(func, args, kwargs) if func in _SPECS else None
        if call is None or call.kind not in self.kinds:
            return func(*args, **kwargs)
        self.seen.counts[call.kind] += 1
        return self.handler(call)


def refuse_unless_found(count: int, method: str, what: str) -> None:
    """Raise when the forward pass ran none of the activations ``method`` rewrites."""
    if count == 0:
        raise UnsupportedModelError(
            f"{method} found no {what} in the model's forward pass, so its backward rule "
            "would change nothing and the result would be a plain gradient. It needs eager "
            "PyTorch code calling modules such as nn.ReLU / nn.ReLU6 / nn.LeakyReLU or "
            "functions such as F.relu / torch.relu / F.relu6 (TorchScript archives and "
            "torch.compile hide the calls). For this model use 'saliency' or "
            "'integrated_gradients'"
        )


# ---- guided backpropagation and DeconvNet -----------------------------------------------

@dataclass
class BackwardRule:
    """Which rule the rectifiers apply on the way back; read at backward time, so one
    forward pass can serve a plain backward and then a guided one (guided Grad-CAM).

    ``gradient``: the true derivative. ``guided`` (Springenberg et al. 2015): the true
    derivative applied to the positive part of the incoming signal only. ``deconvnet``
    (Zeiler & Fergus 2014): the positive part of the incoming signal, whatever the forward
    input was.
    """

    name: str = "gradient"

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.name!r}")


def _rectifier_backward(grad: torch.Tensor, y: torch.Tensor, high: float, slope: float
                        ) -> torch.Tensor:
    """``grad * f'(x)`` computed from the output ``y`` with torch's own fused kernels.

    The output determines the derivative: y > 0 iff x > 0 (for a slope >= 0) and y < high
    iff x < high; torch's ReLU, ReLU6 and LeakyReLU backward read the output the same way.
    """
    if slope:
        return torch.ops.aten.leaky_relu_backward(grad, y, slope, True)
    if math.isinf(high):
        return torch.ops.aten.threshold_backward(grad, y, 0.0)
    return torch.ops.aten.hardtanh_backward(grad, y, 0.0, high)


class _Rectifier(torch.autograd.Function):
    """Forward: the rectifier (in place when the model asked). Backward: ``rule.name``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, call: Call, rule: BackwardRule) -> torch.Tensor:
        ctx.high, ctx.slope, ctx.rule = call.high, call.slope, rule
        # A negative slope makes y > 0 on both sides of 0: keep the sign of x instead of y.
        sign = (x > 0) if call.slope < 0 else None
        if call.inplace:
            y = call.apply_inplace(x)
            ctx.mark_dirty(x)
        else:
            y = call.apply(x)
        ctx.save_for_backward(y if sign is None else sign)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        rule = ctx.rule.name
        if rule == "deconvnet":
            return grad.clamp_min(0), None, None
        if rule == "guided":
            grad = grad.clamp_min(0)
        (saved,) = ctx.saved_tensors
        if saved.dtype == torch.bool:  # negative LeakyReLU slope: saved is x > 0
            return torch.where(saved, grad, grad * ctx.slope), None, None
        return _rectifier_backward(grad, saved, ctx.high, ctx.slope), None, None


@contextlib.contextmanager
def rectifier_rule(rule: BackwardRule) -> Iterator[Seen]:
    """Within the block, every rectifier call of the forward pass backpropagates by ``rule``.

    Example:
        >>> with rectifier_rule(BackwardRule("guided")) as seen:   # doctest: +SKIP
        ...     logits = model(x)
        >>> refuse_unless_found(seen.counts[RECTIFIER], "guided_backprop", "ReLU")
    """
    def handle(call: Call) -> torch.Tensor:
        return _Rectifier.apply(call.x, call, rule)

    mode = _Interceptor((RECTIFIER,), handle)
    with mode:
        yield mode.seen


# ---- DeepLIFT: a reference pass, then the rescale rule ----------------------------------

@dataclass
class Reference:
    """A nonlinearity's input and output on the baseline (and max pooling's winners)."""

    kind: str
    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor | None = None


@contextlib.contextmanager
def recording_references() -> Iterator[list[Reference]]:
    """Record, call by call, what every nonlinearity sees on the baseline (run under no_grad).

    The recorded tensors are copies, so in-place operations later in the forward pass (an
    in-place ReLU, ``out += identity``) cannot change them.
    """
    records: list[Reference] = []

    def handle(call: Call) -> Any:
        x0 = call.x.detach().clone()
        if call.kind == MAXPOOL:
            y0, indices = call.apply(x0)
            records.append(Reference(MAXPOOL, x0, y0, indices))
        else:
            records.append(Reference(call.kind, x0, call.apply(x0)))
        return call.original()

    with _Interceptor((RECTIFIER, SMOOTH, MAXPOOL), handle):
        yield records


def _derivative(call: Call, x: torch.Tensor) -> torch.Tensor:
    if call.kind == RECTIFIER:
        return _rectifier_derivative(x, call.high, call.slope)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (derivative,) = torch.autograd.grad(call.apply(leaf).sum(), leaf)
    return derivative


class _Rescale(torch.autograd.Function):
    """DeepLIFT's rescale rule for an elementwise nonlinearity.

    Forward: the activation. Backward: ``grad * (y - y0) / (x - x0)``, or ``grad * f'(x)``
    where ``|x - x0| < eps`` (the secant is then undefined or numerically meaningless).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, call: Call, ref: Reference, eps: float
                ) -> torch.Tensor:
        delta_in = x - ref.x
        near = delta_in.abs() < eps
        # f'(x) where the secant is undefined. Rectifiers read it off their output with
        # torch's backward kernel (one pass, no sync); smooth functions are differentiated
        # only when needed, before an in-place call overwrites x.
        from_output = call.kind == RECTIFIER and call.slope >= 0
        derivative = None
        if not from_output and bool(near.any()):
            derivative = _derivative(call, x)
        if call.inplace:
            y = call.apply_inplace(x)
            ctx.mark_dirty(x)
        else:
            y = call.apply(x)
        multiplier = (y - ref.y).div_(delta_in)
        if from_output:
            ones = torch.ones((), dtype=y.dtype, device=y.device).expand_as(y)
            derivative = _rectifier_backward(ones, y, call.high, call.slope)
        if derivative is not None:
            multiplier = torch.where(near, derivative, multiplier)
        ctx.save_for_backward(multiplier)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None, None


def _scatter(values: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Add pooled ``values`` back onto the input positions ``indices`` point to."""
    out = torch.zeros_like(like).flatten(2)
    out.scatter_add_(2, indices.expand_as(values).flatten(2), values.flatten(2))
    return out.view_as(like)


class _RescaleMaxPool(torch.autograd.Function):
    """A rescale rule for max pooling that keeps summation-to-delta exact.

    With ``y = max(window of x)``, ``y0 = max(window of x0)`` and ``m = max(y, y0)``, the
    output difference ``y - y0 = (m - y0) + (y - m)`` is split between the winner for ``x``
    (first part) and the winner for ``x0`` (second part); each input's share of
    ``grad * (y - y0)`` is then divided by its own ``x - x0``, so multipliers times input
    differences add up to ``grad * (y - y0)`` exactly. This is the rule Captum's DeepLift
    applies to ``nn.MaxPool`` modules, with one correction: overlapping windows (kernel 3,
    stride 2) add their shares where Captum's ``max_unpool`` keeps only one of them. The
    original DeepLIFT code used the plain gradient at max pooling, which breaks
    summation-to-delta. Where ``|x - x0| < eps`` the plain gradient is used.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, call: Call, ref: Reference, eps: float
                ) -> torch.Tensor:
        y, indices = call.apply(x)
        top = torch.maximum(y, ref.y)
        ctx.eps = eps
        ctx.save_for_backward(x - ref.x, indices, ref.indices, top - ref.y, y - top)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        delta_in, indices, ref_indices, share, ref_share = ctx.saved_tensors
        spread = (_scatter(grad * share, indices, delta_in)
                  + _scatter(grad * ref_share, ref_indices, delta_in))
        small = delta_in.abs() < ctx.eps
        multiplied = spread / delta_in.masked_fill(small, 1.0)
        if bool(small.any()):
            multiplied = torch.where(small, _scatter(grad, indices, delta_in), multiplied)
        return multiplied, None, None, None


@contextlib.contextmanager
def rescale_rule(references: list[Reference], eps: float = 1e-6) -> Iterator[Seen]:
    """Within the block, nonlinearities backpropagate DeepLIFT multipliers.

    The k-th nonlinearity called in the block is paired with ``references[k]``, recorded by
    :func:`recording_references` on the baseline (whose batch may be 1: it broadcasts).

    Raises:
        UnsupportedModelError: when the forward pass calls different nonlinearities, or
            more of them, than it did on the baseline (data-dependent control flow).
    """
    position = 0

    def handle(call: Call) -> torch.Tensor:
        nonlocal position
        ref = references[position] if position < len(references) else None
        position += 1
        if (ref is None or ref.kind != call.kind or ref.x.shape[1:] != call.x.shape[1:]
                or ref.x.shape[0] not in (1, call.x.shape[0])):
            raise UnsupportedModelError(
                "deeplift pairs each nonlinearity with the same call on the baseline, but "
                f"call {position} differs between the two passes ({call.kind} on shape "
                f"{tuple(call.x.shape)} vs "
                f"{'nothing' if ref is None else (ref.kind, tuple(ref.x.shape))}); the "
                "model's forward seems to depend on its input. Use integrated_gradients"
            )
        rule = _RescaleMaxPool if call.kind == MAXPOOL else _Rescale
        return rule.apply(call.x, call, ref, eps)

    mode = _Interceptor((RECTIFIER, SMOOTH, MAXPOOL), handle)
    with mode:
        yield mode.seen
    if position != len(references):
        raise UnsupportedModelError(
            f"deeplift saw {len(references)} nonlinearities on the baseline but {position} on "
            "the input; the model's forward seems to depend on its input. Use "
            "integrated_gradients"
        )
