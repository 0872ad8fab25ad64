"""Gradient-family attribution: the derivative of the target logit with respect to pixels.

Each method costs what its definition cannot avoid: one forward pass and one backward pass
to the input (``torch.autograd.grad`` with the input as the only leaf asked for, so no
weight gradient is computed or accumulated), or ``n`` of those for path and noise methods,
batched under ``batch_size`` to bound peak memory.
"""

from __future__ import annotations

import numpy as np
import torch

from convlens.attribution.core import Problem, register
from convlens.errors import MethodError


def input_gradients(problem: Problem, inputs: torch.Tensor, repeat: int = 1,
                    logits_are_clean: bool = False) -> torch.Tensor:
    """d(target logit)/d(inputs) for a batch of ``repeat`` consecutive copies per sample."""
    inputs = inputs.detach().requires_grad_(True)
    logits = problem.forward(inputs)
    if logits_are_clean:
        problem.indices(logits)
    scores = problem.scores(logits, repeat=repeat)
    (grad,) = torch.autograd.grad(scores.sum(), inputs)
    return grad


@register("saliency", family="gradient",
          reference="Simonyan, Vedaldi, Zisserman 2014, Deep Inside Convolutional Networks",
          summary="absolute gradient of the target logit: which pixels change the score most",
          channel_reduction="max_abs")
def saliency(problem: Problem) -> torch.Tensor:
    """|d y_c / d x|; the maximum over colour channels is taken at presentation."""
    return input_gradients(problem, problem.x, logits_are_clean=True).abs()


@register("input_x_gradient", family="gradient", signed=True,
          reference="Shrikumar et al. 2016, Not Just a Black Box (gradient * input)",
          summary="input times gradient: first-order contribution of each pixel value")
def input_x_gradient(problem: Problem) -> torch.Tensor:
    """x * d y_c / d x."""
    return problem.x * input_gradients(problem, problem.x, logits_are_clean=True)


_RULES = ("gauss_legendre", "riemann_middle", "riemann_trapezoid", "riemann_left",
          "riemann_right")


def path_points(steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alpha`` in [0, 1] and weights summing to 1 for a path integral.

    Gauss-Legendre (the default, as in Captum) is exact for polynomials of degree
    ``2 * steps - 1`` along the path, so completeness holds far more tightly than with a
    Riemann sum of the same cost.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise MethodError(f"steps must be a positive integer, got {steps!r}")
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1) / 2, weights / 2
    elif rule == "riemann_middle":
        alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    elif rule == "riemann_left":
        alphas, weights = np.arange(steps) / steps, np.full(steps, 1 / steps)
    elif rule == "riemann_right":
        alphas, weights = np.arange(1, steps + 1) / steps, np.full(steps, 1 / steps)
    elif rule == "riemann_trapezoid":
        if steps < 2:
            raise MethodError("the trapezoid rule needs steps >= 2")
        alphas = np.linspace(0, 1, steps)
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        raise MethodError(f"unknown integration rule {rule!r}; valid: {', '.join(_RULES)}")
    return torch.as_tensor(alphas), torch.as_tensor(weights)


def make_baseline(baseline: object, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a baseline (None = zeros, a number, or a tensor) to ``x``'s shape."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError:
            raise MethodError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input's "
                f"shape {tuple(x.shape)}"
            ) from None
    raise MethodError(
        f"baseline must be None (zeros), a number or a tensor, got {type(baseline).__name__}"
    )


def check_batch_size(batch_size: object) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise MethodError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@register("integrated_gradients", family="gradient", signed=True,
          reference="Sundararajan, Taly, Yan 2017, Axiomatic Attribution for Deep Networks",
          summary="path-averaged gradients from a baseline, times (x - baseline)")
def integrated_gradients(problem: Problem, *, baseline: object = None, steps: int = 50,
                         rule: str = "gauss_legendre", batch_size: int = 64) -> torch.Tensor:
    """(x - x0) * integral over alpha of d y_c / d x at x0 + alpha (x - x0).

    The ``N * steps`` path points run in chunks of at most ``batch_size`` images, so peak
    memory is that of one ``batch_size`` forward and backward, whatever ``steps`` is. The
    attributions sum to ``y_c(x) - y_c(x0)`` up to the quadrature error (completeness).
    """
    batch_size = check_batch_size(batch_size)
    x = problem.x
    x0 = make_baseline(baseline, x)
    alphas, weights = path_points(steps, rule)
    alphas, weights = alphas.to(x), weights.to(x)
    problem.indices()
    n = x.shape[0]
    delta = x - x0
    total = torch.zeros_like(x)
    # Flattened (sample, step) pairs, in chunks; each chunk is one batched pass.
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(steps)).to(x.device)
    for chunk in pairs.split(batch_size):
        samples, points = chunk[:, 0], chunk[:, 1]
        shape = (-1,) + (1,) * (x.dim() - 1)
        inputs = x0[samples] + alphas[points].view(shape) * delta[samples]
        inputs.requires_grad_(True)
        logits = problem.forward(inputs)
        scores = logits.gather(1, problem.indices()[samples].view(-1, 1))
        (grad,) = torch.autograd.grad(scores.sum(), inputs)
        total.index_add_(0, samples, grad * weights[points].view(shape))
    return delta * total
