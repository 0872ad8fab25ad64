"""Noise-averaged gradients: SmoothGrad, VarGrad and GradientSHAP (expected gradients).

Each method averages input gradients over ``samples`` random draws per image. The
``N * samples`` perturbed images run in batched passes of at most ``batch_size`` images, so
the cost is ``N * samples / batch_size`` forward+backward passes of the floor's kind and
peak memory is that of one ``batch_size`` pass. The target is resolved once on the clean
input, so every noisy copy explains the class predicted for the real image.

Randomness comes from one ``torch.Generator`` on ``x``'s device seeded with ``seed``. Each
(image, draw) pair gets its own noise tensor, drawn in a fixed order, so the result does not
depend on ``batch_size``: the same seed on the same device gives the same attribution
however the draws are batched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from convlens.attribution.core import Problem, register
from convlens.attribution.gradients import check_batch_size
from convlens.attribution.targets import target_scores
from convlens.errors import MethodError


def _check_samples(samples: object) -> int:
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise MethodError(f"samples must be a positive integer, got {samples!r}")
    return samples


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        raise MethodError(
            f"sigma must be a number >= 0 (noise std as a fraction of each image's value "
            f"range, e.g. 0.15), got {sigma!r}"
        )
    return float(sigma)


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MethodError(f"seed must be an integer, got {seed!r}")
    return seed


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _accumulator_dtype(x: torch.Tensor) -> torch.dtype:
    """Sums of many gradients are kept in float64 where the device has it."""
    return x.dtype if x.device.type == "mps" else torch.float64


def _noise_std(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-sample noise standard deviation ``sigma * (max(x_i) - min(x_i))``, shape (N,1,1,1)."""
    flat = x.flatten(1)
    spread = flat.amax(dim=1) - flat.amin(dim=1)
    return (sigma * spread).view(-1, *([1] * (x.dim() - 1)))


def _draw_chunks(n: int, samples: int, batch_size: int, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image index, draw index) pairs, image-major, in chunks of at most ``batch_size``."""
    images = torch.arange(n, device=device).repeat_interleave(samples)
    draws = torch.arange(samples, device=device).repeat(n)
    yield from zip(images.split(batch_size), draws.split(batch_size))


def _normal_like(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise, one tensor drawn per row in order (independent of chunking)."""
    noise = torch.empty_like(rows)
    for row in noise:
        row.normal_(generator=generator)
    return noise


def _target_gradients(problem: Problem, inputs: torch.Tensor, images: torch.Tensor
                      ) -> torch.Tensor:
    """d y_c / d inputs, where row k of ``inputs`` is a copy of image ``images[k]``."""
    inputs = inputs.detach().requires_grad_(True)
    logits = problem.forward(inputs)
    (grad,) = torch.autograd.grad(target_scores(logits, problem.indices()[images]).sum(), inputs)
    return grad


def _noisy_gradient_moments(problem: Problem, samples: int, sigma: float, seed: int,
                            batch_size: int, second: bool
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (and mean square) over ``samples`` noisy copies of each image's input gradient."""
    samples, sigma = _check_samples(samples), _check_sigma(sigma)
    batch_size, seed = check_batch_size(batch_size), _check_seed(seed)
    x = problem.x
    problem.indices()
    std = _noise_std(x, sigma)
    generator = _generator(seed, x.device)
    dtype = _accumulator_dtype(x)
    total = torch.zeros(x.shape, dtype=dtype, device=x.device)
    squares = torch.zeros_like(total) if second else None
    for images, _draws in _draw_chunks(x.shape[0], samples, batch_size, x.device):
        clean = x[images]
        noisy = clean + _normal_like(clean, generator) * std[images] if sigma else clean
        grad = _target_gradients(problem, noisy, images).to(dtype)
        total.index_add_(0, images, grad)
        if squares is not None:
            squares.index_add_(0, images, grad * grad)
    mean = total / samples
    return mean, None if squares is None else squares / samples


@register("smoothgrad", family="gradient", signed=True, channel_reduction="max_abs",
          reference="Smilkov et al. 2017, SmoothGrad: removing noise by adding noise",
          summary="input gradient averaged over noisy copies of the image")
def smoothgrad(problem: Problem, *, samples: int = 50, sigma: float = 0.15, seed: int = 0,
               batch_size: int = 64) -> torch.Tensor:
    """Mean of d y_c / d x over ``samples`` copies of x with Gaussian noise added.

    The noise std is ``sigma * (max(x_i) - min(x_i))`` for image ``i`` (the paper's noise
    level, 10-20 % of the value range; 15 % by default). The mean is the raw (signed)
    gradient's; the paper shows its absolute value, which presentation does (``max_abs``).
    """
    mean, _ = _noisy_gradient_moments(problem, samples, sigma, seed, batch_size, second=False)
    return mean.to(problem.x.dtype)


@register("vargrad", family="gradient", channel_reduction="max_abs",
          reference="Adebayo et al. 2018, Local Explanation Methods for Deep Neural Networks "
                    "Lack Sensitivity to Parameter Values (VarGrad)",
          summary="variance of the input gradient over noisy copies of the image")
def vargrad(problem: Problem, *, samples: int = 50, sigma: float = 0.15, seed: int = 0,
            batch_size: int = 64) -> torch.Tensor:
    """Variance of d y_c / d x over ``samples`` noisy copies (noise as in SmoothGrad).

    The population variance (divided by ``samples``, as Captum's NoiseTunnel ``vargrad``),
    accumulated in float64.
    """
    mean, square = _noisy_gradient_moments(problem, samples, sigma, seed, batch_size,
                                           second=True)
    return (square - mean * mean).clamp_min(0).to(problem.x.dtype)


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images (replicate padding, 3-std kernel)."""
    radius = max(1, math.ceil(3 * std))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / std) ** 2)
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)  # (C, 1, 1, K)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel, groups=x.shape[1])
    return F.conv2d(rows, kernel.transpose(2, 3), groups=x.shape[1])


BLUR_FRACTION = 0.1


def baseline_set(baseline: object, x: torch.Tensor) -> torch.Tensor:
    """The baselines to draw from, as ``(1 or N, B, C, H, W)``.

    None: per image, zeros (in normalised space: the dataset's mean colour) and the image
    blurred with a Gaussian of std ``0.1 * min(H, W)`` (Sturmfels, Lundberg, Lee 2020,
    "Visualizing the Impact of Feature Attribution Baselines"); a number: that constant;
    ``(C, H, W)``: one baseline; ``(B, C, H, W)``: B baselines shared by every image (as
    Captum's ``baselines``); ``(N, B, C, H, W)``: B baselines per image.
    """
    shape = tuple(x.shape[1:])
    if baseline is None:
        std = BLUR_FRACTION * min(x.shape[-2:])
        return torch.stack([torch.zeros_like(x), gaussian_blur(x, std)], dim=1)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full((1, 1, *shape), float(baseline), dtype=x.dtype, device=x.device)
    if not isinstance(baseline, torch.Tensor):
        raise MethodError(
            f"baseline must be None (zeros and a blurred copy), a number or a tensor of "
            f"baseline images, got {type(baseline).__name__}"
        )
    bases = baseline.to(device=x.device, dtype=x.dtype)
    bases = bases.view(1, 1, *bases.shape) if bases.dim() == 3 else bases
    bases = bases.unsqueeze(0) if bases.dim() == 4 else bases
    if bases.dim() != 5 or tuple(bases.shape[2:]) != shape or bases.shape[0] not in (
            1, x.shape[0]) or bases.shape[1] == 0:
        raise MethodError(
            f"baseline of shape {tuple(baseline.shape)} does not fit inputs of shape "
            f"{tuple(x.shape)}; give one image {shape}, a set (B, {', '.join(map(str, shape))})"
            f" or a set per image ({x.shape[0]}, B, {', '.join(map(str, shape))})"
        )
    return bases


@register("gradient_shap", family="gradient", signed=True,
          reference="Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions "
                    "(GradientSHAP); Erion et al. 2021, expected gradients",
          summary="gradients at random points between random baselines and the image, "
                  "times (image - baseline)")
def gradient_shap(problem: Problem, *, baseline: object = None, samples: int = 50,
                  sigma: float = 0.0, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Mean over draws of ``(x~ - x0) * d y_c / d x`` at ``x0 + alpha (x~ - x0)``.

    Per draw: ``x0`` uniformly from the baseline set (see :func:`baseline_set`),
    ``alpha ~ U(0, 1)``, and ``x~ = x + noise`` with noise std ``sigma * (max(x) - min(x))``
    (``x~ = x`` for the default ``sigma = 0``). In expectation this is the average over
    baselines of integrated gradients, so the attributions sum, in expectation, to
    ``E[y_c(x~) - y_c(x0)]``. Draws are made in this order from the seeded generator: all
    baseline choices ``(N, samples)``, all alphas ``(N, samples)``, then (if ``sigma > 0``)
    one noise tensor per (image, draw), image-major.

    Deviations: Captum requires baselines and takes an absolute noise std; we default to
    zeros plus a blurred copy of the image and scale the noise as SmoothGrad does.

    Example:
        >>> refs = torch.stack([torch.zeros(3, 224, 224), x[0].flip(-1)])  # doctest: +SKIP
        >>> a = attribute(model, x, "gradient_shap", baseline=refs, samples=200)  # doctest: +SKIP
    """
    samples, sigma = _check_samples(samples), _check_sigma(sigma)
    batch_size, seed = check_batch_size(batch_size), _check_seed(seed)
    x = problem.x
    n = x.shape[0]
    bases = baseline_set(baseline, x)
    problem.indices()
    generator = _generator(seed, x.device)
    choice = torch.randint(bases.shape[1], (n, samples), generator=generator, device=x.device)
    alpha = torch.rand((n, samples), generator=generator, device=x.device, dtype=x.dtype)
    std = _noise_std(x, sigma)
    dtype = _accumulator_dtype(x)
    total = torch.zeros(x.shape, dtype=dtype, device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for images, draws in _draw_chunks(n, samples, batch_size, x.device):
        inputs = x[images]
        if sigma:
            inputs = inputs + _normal_like(inputs, generator) * std[images]
        picked = choice[images, draws]
        x0 = bases[0, picked] if bases.shape[0] == 1 else bases[images, picked]
        delta = inputs - x0
        grad = _target_gradients(problem, x0 + alpha[images, draws].view(shape) * delta, images)
        total.index_add_(0, images, (delta * grad).to(dtype))
    return (total / samples).to(x.dtype)
