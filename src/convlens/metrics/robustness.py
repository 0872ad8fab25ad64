"""Infidelity and max-sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar 2019, "On the
(In)fidelity and Sensitivity of Explanations", NeurIPS), with Captum's defaults so that
results can be compared with ``captum.metrics.infidelity`` / ``sensitivity_max``.

Infidelity: ``E_I[(I . a - (f(x) - f(x - I)))^2]`` for random perturbations I ~ N(0, sigma^2)
(Captum's documented perturbation, sigma 0.003; 10 samples; not normalised), f the explained
class's logit, a the raw attribution (broadcast to the input's shape). Lower is better.

Max-sensitivity: ``max_k ||a(x + d_k) - a(x)|| / ||a(x)||`` over k = 1..10 perturbations d_k
uniform in the L-infinity ball of radius 0.02 (Captum: Frobenius norm, divided by the norm of
the unperturbed explanation, or by 1 where that is 0). It re-runs the attribution method on
the perturbed inputs, explaining the same class. Lower is better.

Noise is drawn in Captum's layout (sample k of image i is row ``i * samples + k``), from a
seeded generator: with one draw per call (``batch_size`` >= images x samples) the tests feed
Captum the very same noise and compare to float precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from convlens.attribution.core import attribute
from convlens.attribution.targets import TargetLike
from convlens.metrics.core import (
    MetricError,
    Scores,
    check_choice,
    check_positive,
    chunks,
    class_scores,
    finish,
    generator_for,
    pixel_maps,
    prepare_x,
    register_metric,
    resolve,
    unwrap,
)

REFERENCE = ("Yeh, Hsieh, Suggala, Inouye, Ravikumar. On the (In)fidelity and Sensitivity of "
             "Explanations. NeurIPS 2019")


@register_metric("infidelity", family="robustness", needs="maps", reference=REFERENCE,
                 summary="mean squared error between attribution . perturbation and the score "
                         "change under small noise (lower is better)", higher_is_better=False,
                 raw_maps=True)
def infidelity(model: nn.Module, x: torch.Tensor, maps: object, target: TargetLike = None, *,
               samples: int = 10, sigma: float = 0.003, normalize: bool = False,
               output: str = "logit", seed: int = 0, batch_size: int = 64) -> Scores:
    """Infidelity per image (Yeh et al. 2019), Captum's defaults.

    Args:
        model: ``nn.Module`` or Classifier.
        x: Preprocessed images ``(N, C, H, W)``.
        maps: Raw attributions, x's shape (``(N, 1, H, W)`` and layer maps are broadcast).
        target: The explained class.
        samples: Perturbations per image.
        sigma: Standard deviation of the Gaussian perturbation I (x - I is evaluated).
        normalize: Captum's ``normalize``: rescale the attribution term by the least-squares
            factor ``beta`` before the error (the paper's scale-invariant variant).
        output: ``"logit"`` (Captum: the model's output) or ``"probability"``.
        seed: Seed of the noise.
        batch_size: Perturbed copies forwarded at once.
    """
    check_positive("samples", samples)
    check_positive("sigma", sigma, integer=False)
    options = dict(samples=samples, sigma=sigma, normalize=normalize, output=output, seed=seed,
                   batch_size=batch_size)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    a = pixel_maps(maps, x, reduce=False)
    logits, classes = resolve(module, x, target, labels)
    n = x.shape[0]
    total = n * samples
    generator = generator_for(seed, x.device)
    dots = torch.empty(total, dtype=torch.float64, device=x.device)
    noises: list[torch.Tensor] = []
    for first, stop in chunks(total, batch_size):
        noise = torch.randn((stop - first, *x.shape[1:]), generator=generator,
                            dtype=torch.float32).to(device=x.device, dtype=x.dtype) * sigma
        rows = torch.arange(first, stop, device=x.device) // samples
        dots[first:stop] = (noise.double() * a[rows].double()).flatten(1).sum(1)
        noises.append(noise)

    def make_batch(first: int, stop: int) -> torch.Tensor:
        noise = torch.cat(noises)[first:stop] if len(noises) > 1 else noises[0][first:stop]
        return x[torch.arange(first, stop, device=x.device) // samples] - noise

    perturbed = class_scores(module, total, make_batch, classes.repeat_interleave(samples),
                             batch_size, output).view(n, samples)
    base = logits.double() if output == "logit" else torch.softmax(logits.double(), 1)
    diffs = base.gather(1, classes[:, None]) - perturbed
    dots = dots.view(n, samples)
    if normalize:
        beta = (dots * diffs).mean(1, keepdim=True) / dots.square().mean(1, keepdim=True).clamp_min(
            1e-300)
        dots = dots * beta
    values = (dots - diffs).square().mean(1)
    return finish("infidelity", values, [None] * n, options)


@register_metric("max_sensitivity", family="robustness", needs="method", reference=REFERENCE,
                 summary="largest relative change of the map under small input noise (lower is "
                         "better)", higher_is_better=False)
def max_sensitivity(model: nn.Module, x: torch.Tensor, method: str, target: TargetLike = None,
                    *, radius: float = 0.02, samples: int = 10, norm: str = "fro",
                    seed: int = 0, batch_size: int = 64, layer: Any = None,
                    method_options: Mapping[str, Any] | None = None,
                    maps: torch.Tensor | None = None) -> Scores:
    """Max-sensitivity per image (Yeh et al. 2019), Captum's ``sensitivity_max`` defaults.

    Args:
        model: ``nn.Module`` or Classifier.
        x: Preprocessed images ``(N, C, H, W)``.
        method: The attribution method's registry name.
        target: The explained class (fixed for the perturbed inputs).
        radius: Half-width of the uniform noise.
        samples: Perturbations per image.
        norm: ``"fro"`` or ``"inf"`` (largest absolute difference).
        seed: Seed of the noise.
        batch_size: Perturbed copies attributed at once.
        layer: The method's layer, if it takes one.
        method_options: The method's options.
        maps: The method's maps on ``x``, when already computed (saves one call).
    """
    check_positive("samples", samples)
    check_positive("radius", radius, integer=False)
    check_choice("norm", norm, ("fro", "inf"))
    options = dict(radius=radius, samples=samples, norm=norm, seed=seed, batch_size=batch_size)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    _, classes = resolve(module, x, target, labels)
    method_options = dict(method_options or {})

    def explain(inputs: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return attribute(module, inputs, method, target=cls, layer=layer, **method_options)

    reference = explain(x, classes) if maps is None else maps.to(x.device)
    if reference.shape[0] != x.shape[0]:
        raise MetricError(f"maps for {reference.shape[0]} images given with {x.shape[0]} images")

    def size(t: torch.Tensor) -> torch.Tensor:
        flat = t.double().flatten(1)
        return flat.norm(dim=1) if norm == "fro" else flat.abs().amax(1)

    scale = size(reference)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    n = x.shape[0]
    total = n * samples
    generator = generator_for(seed, x.device)
    out = torch.empty(total, dtype=torch.float64, device=x.device)
    for first, stop in chunks(total, batch_size):
        noise = torch.rand((stop - first, *x.shape[1:]), generator=generator) * (2 * radius) \
            - radius
        rows = torch.arange(first, stop, device=x.device) // samples
        perturbed = x[rows] + noise.to(device=x.device, dtype=x.dtype)
        out[first:stop] = size(explain(perturbed, classes[rows]) - reference[rows]) / scale[rows]
    values = out.view(n, samples).amax(1)
    return finish("max_sensitivity", values, [None] * n, options)
