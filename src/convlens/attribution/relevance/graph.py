"""Autograd functions that make relevance flow through the graph like a gradient.

Each is an identity (or the real value) in the forward pass and one piece of an LRP rule in
the backward pass; ``propagation.py`` explains how they combine. Real values are handed in
through a list (``holder``) rather than as inputs, so that the output is a fresh tensor and
not a view of an input: downstream in-place operations (``ReLU(inplace=True)``,
``out += identity``) then work on it as they would on the model's own tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from convlens.attribution.relevance import rules as R
from convlens.errors import UnsupportedModelError


class InputTimes(torch.autograd.Function):
    """Forward: the modified input ``m(x)`` (given); backward: ``grad * m(x)`` to ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, holder: list[torch.Tensor]) -> torch.Tensor:
        out = holder[0].detach()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (value,) = ctx.saved_tensors
        return grad * value, None


class Relay(torch.autograd.Function):
    """Forward: the layer's real output; backward: relevance over each stabilised denominator.

    ``spec`` holds, per denominator, ``(scale, where, epsilon)`` (see ``rules.Group``).
    """

    @staticmethod
    def forward(ctx: Any, holder: list[torch.Tensor], spec: tuple, *denominators: torch.Tensor
                ) -> torch.Tensor:
        value = holder[0]
        weights = []
        for den, (scale, where, eps) in zip(denominators, spec):
            weight = R.safe_reciprocal(den, eps)
            if where == "positive":
                weight = weight * (value > 0)
            elif where == "negative":
                weight = weight * (value < 0)
            if scale != 1:
                weight = weight * scale
            weights.append(weight)
        ctx.save_for_backward(*weights)
        return value.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return (None, None, *(grad * w for w in ctx.saved_tensors))


class Guard(torch.autograd.Function):
    """Stands for a layer output whose rule graph is built lazily; must never be reached."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, holder: list[torch.Tensor], where: str
                ) -> torch.Tensor:
        ctx.where = where
        return holder[0].detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        raise UnsupportedModelError(
            f"relevance reached the output of {ctx.where} through an operation that LRP did "
            "not intercept (a module called with keyword or nested tensor arguments, or a "
            "tensor kept aside and used later); give the consuming module a rule with "
            "rules={'<name>': 'pass' | 'gradient' | 'epsilon'}"
        )


class Pass(torch.autograd.Function):
    """Forward: the activation's real output; backward: identity (relevance unchanged)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, holder: list[torch.Tensor]) -> torch.Tensor:
        return holder[0].detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class PassInPlace(torch.autograd.Function):
    """An activation already applied in place to ``x``'s storage: re-root x's history."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class Sum(torch.autograd.Function):
    """``z = sum_i c_i t_i (+ constants)``: relevance ``c_i t_i / stab(z) * R`` to each term."""

    @staticmethod
    def forward(ctx: Any, holder: list, coefficients: tuple[float, ...],
                *terms: torch.Tensor) -> torch.Tensor:
        value, inplace = holder
        inverse = R.safe_reciprocal(value, R.STABILISER)
        ctx.shapes = [t.shape for t in terms]
        ctx.save_for_backward(*(c * t * inverse for c, t in zip(coefficients, terms)))
        if inplace:  # ``a += b``: write the sum into a, which takes this node as history
            terms[0].copy_(value)
            ctx.mark_dirty(terms[0])
            return terms[0]
        return value.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grads = [(grad * r).sum_to_size(shape) for r, shape in zip(ctx.saved_tensors, ctx.shapes)]
        return (None, None, *grads)
