"""SmoothGrad, VarGrad and GradientSHAP against their definitions, in float64.

The exact references re-draw the documented random stream (one generator seeded with
``seed``; GradientSHAP: baseline choices, then alphas, then one noise tensor per (image,
draw), image-major) and compute every gradient one image at a time. Statistical tests
compare with Captum's GradientShap and with the closed-form expectation (the average over
baselines of integrated gradients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens.attribution.noise import gaussian_blur
from convlens.errors import MethodError


def _x(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def _grad(model: nn.Module, point: torch.Tensor, target: int) -> torch.Tensor:
    point = point.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(point[None])[0, target], point)
    return grad


def _std(image: torch.Tensor, sigma: float) -> torch.Tensor:
    return sigma * (image.max() - image.min())


def reference_noisy_gradients(model: nn.Module, x: torch.Tensor, targets: list[int],
                              samples: int, sigma: float, seed: int) -> torch.Tensor:
    """Per image i, per draw j: d y_c / d x at x_i + N(0, (sigma (max x_i - min x_i))^2)."""
    generator = torch.Generator().manual_seed(seed)
    grads = torch.empty(x.shape[0], samples, *x.shape[1:], dtype=x.dtype)
    for i, image in enumerate(x):
        for j in range(samples):
            noise = torch.empty_like(image).normal_(generator=generator)
            grads[i, j] = _grad(model, image + _std(image, sigma) * noise, targets[i])
    return grads


# ---- SmoothGrad / VarGrad -----------------------------------------------------------------

def test_smoothgrad_and_vargrad_match_their_definitions() -> None:
    model, x = seeded(TinyVGG()), _x(2)
    targets = [1, 3]
    grads = reference_noisy_gradients(model, x, targets, samples=6, sigma=0.2, seed=4)
    options = {"target": targets, "samples": 6, "sigma": 0.2, "seed": 4, "batch_size": 5}
    smooth = cl.attribute(model, x, "smoothgrad", **options)
    var = cl.attribute(model, x, "vargrad", **options)
    torch.testing.assert_close(smooth, grads.mean(dim=1).float())
    torch.testing.assert_close(var, grads.var(dim=1, unbiased=False).float())
    assert var.abs().max() > 1e-3  # the noise did move the gradient


@pytest.mark.parametrize("method", ["smoothgrad", "vargrad", "gradient_shap"])
def test_results_do_not_depend_on_the_internal_batch_size(method: str) -> None:
    model, x = seeded(TinyResNet()), _x(3)
    sigma = {"sigma": 0.1} if method == "gradient_shap" else {}
    runs = [cl.attribute(model, x, method, target=2, samples=5, batch_size=size, **sigma)
            for size in (3, 7, 64)]  # chunk edges fall inside and between images
    for run in runs[1:]:
        torch.testing.assert_close(run, runs[0], rtol=1e-6, atol=1e-9)


def test_seed_makes_runs_repeatable_and_different_seeds_differ() -> None:
    model, x = seeded(TinyVGG()), _x(1)
    first = cl.attribute(model, x, "smoothgrad", samples=4, seed=1)
    torch.testing.assert_close(cl.attribute(model, x, "smoothgrad", samples=4, seed=1), first,
                               rtol=0, atol=0)
    assert not torch.allclose(cl.attribute(model, x, "smoothgrad", samples=4, seed=2), first)


def test_without_noise_smoothgrad_is_the_gradient_and_vargrad_is_zero() -> None:
    model, x = seeded(TinyResNet()), _x(2)
    gradient = cl.attribute(model, x, "input_x_gradient", target=0) / x.float()
    smooth = cl.attribute(model, x, "smoothgrad", target=0, samples=3, sigma=0.0)
    torch.testing.assert_close(smooth, gradient, rtol=1e-4, atol=1e-6)
    var = cl.attribute(model, x, "vargrad", target=0, samples=3, sigma=0.0)
    assert float(var.abs().max()) < 1e-12


def test_closed_forms_on_a_linear_model() -> None:
    model, x = seeded(LinearNet((3, 4, 4))), _x(2, 4)
    weight = model.fc.weight[2].view(1, 3, 4, 4).expand(2, -1, -1, -1).float()
    torch.testing.assert_close(cl.attribute(model, x, "smoothgrad", target=2, samples=5), weight)
    assert float(cl.attribute(model, x, "vargrad", target=2, samples=5).abs().max()) < 1e-12
    x0 = _x(1, 4, seed=3)
    shap = cl.attribute(model, x, "gradient_shap", target=2, baseline=x0[0], samples=5)
    torch.testing.assert_close(shap, ((x - x0) * weight.double()).float())


class Scaled(nn.Module):
    """model(x / scale): its input range is ``scale`` times larger."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x / self.scale)


def test_noise_level_is_relative_to_each_images_value_range() -> None:
    """With sigma relative to max - min, rescaling the input just rescales the gradient."""
    model, x = seeded(TinyVGG()), _x(2)
    base = cl.attribute(model, x, "smoothgrad", target=1, samples=4, sigma=0.3)
    scaled = cl.attribute(Scaled(model, 10.0), 10 * x, "smoothgrad", target=1, samples=4,
                          sigma=0.3)
    torch.testing.assert_close(scaled * 10, base, rtol=1e-5, atol=1e-7)


def test_the_target_is_resolved_on_the_clean_input() -> None:
    model, x = seeded(TinyVGG()), _x(3)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    options = {"samples": 4, "sigma": 2.0}  # heavy noise: noisy copies predict other classes
    torch.testing.assert_close(cl.attribute(model, x, "smoothgrad", **options),
                               cl.attribute(model, x, "smoothgrad", target=predicted, **options))


@pytest.mark.parametrize("option", [{"samples": 0}, {"samples": 2.5}, {"sigma": -0.1},
                                    {"sigma": "high"}, {"seed": 1.5}, {"batch_size": 0}])
@pytest.mark.parametrize("method", ["smoothgrad", "vargrad", "gradient_shap"])
def test_bad_options_are_refused(method: str, option: dict) -> None:
    with pytest.raises(MethodError, match=next(iter(option))):
        cl.attribute(seeded(TinyVGG()), _x(1), method, target=0, **option)


# ---- GradientSHAP -------------------------------------------------------------------------

def reference_gradient_shap(model: nn.Module, x: torch.Tensor, bases: torch.Tensor,
                            target: int, samples: int, sigma: float, seed: int
                            ) -> torch.Tensor:
    """Mean over draws of (x~ - x0) * grad(x0 + alpha (x~ - x0)), ``bases``: (B, C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    choice = torch.randint(bases.shape[0], (n, samples), generator=generator)
    alpha = torch.rand((n, samples), generator=generator, dtype=x.dtype)
    out = torch.zeros_like(x)
    for i, image in enumerate(x):
        for j in range(samples):
            noisy = image
            if sigma:
                noise = torch.empty_like(image).normal_(generator=generator)
                noisy = image + _std(image, sigma) * noise
            x0 = bases[choice[i, j]]
            out[i] += (noisy - x0) * _grad(model, x0 + alpha[i, j] * (noisy - x0), target)
    return out / samples


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_gradient_shap_matches_its_definition_with_the_same_draws(sigma: float) -> None:
    model, x, bases = seeded(TinyResNet()), _x(2), _x(3, seed=8)
    got = cl.attribute(model, x, "gradient_shap", target=4, baseline=bases, samples=6,
                       sigma=sigma, seed=11, batch_size=5)
    expected = reference_gradient_shap(model, x, bases, 4, samples=6, sigma=sigma, seed=11)
    torch.testing.assert_close(got, expected.float())


def _integrated_gradients(model: nn.Module, x: torch.Tensor, x0: torch.Tensor, target: int,
                          steps: int = 64) -> torch.Tensor:
    """(x - x0) * Gauss-Legendre integral of the gradient, every path point in one batch."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.as_tensor((nodes + 1) / 2).view(-1, 1, 1, 1, 1)
    points = (x0 + alphas * (x - x0)).flatten(0, 1).requires_grad_(True)  # (steps * N, ...)
    (grad,) = torch.autograd.grad(model(points)[:, target].sum(), points)
    grad = grad.view(steps, *x.shape)
    return (x - x0) * (torch.as_tensor(weights / 2).view(-1, 1, 1, 1, 1) * grad).sum(0)


def test_gradient_shap_agrees_with_captum_and_its_expectation() -> None:
    """E[alpha, x0] of the GradientSHAP draw = mean over baselines of exact IG (sigma = 0)."""
    from captum.attr import GradientShap

    model, x, bases = seeded(TinyVGG()), _x(2, 6), _x(4, 6, seed=2)
    expected = torch.stack([_integrated_gradients(model, x, b.expand_as(x), 1)
                            for b in bases]).mean(0)
    ours = cl.attribute(model, x, "gradient_shap", target=1, baseline=bases, samples=3000,
                        batch_size=3000).double()
    torch.manual_seed(0)  # Captum draws from the global generator
    peer = GradientShap(model).attribute(x, baselines=bases, target=1, n_samples=3000)

    def error(a: torch.Tensor) -> float:
        return float((a - expected).norm() / expected.norm())

    assert error(ours) < 0.06 and error(peer) < 0.06
    assert float((ours - peer).norm() / peer.norm()) < 0.1
    few = cl.attribute(model, x, "gradient_shap", target=1, baseline=bases, samples=30).double()
    assert error(few) > error(ours)  # the Monte Carlo error shrinks with the sample count


def test_gradient_shap_with_noise_agrees_with_captum_in_expectation() -> None:
    from captum.attr import GradientShap

    model, x, bases = seeded(TinyVGG()), _x(1, 6), _x(3, 6, seed=2)
    sigma = 0.1
    ours = cl.attribute(model, x, "gradient_shap", target=3, baseline=bases, samples=4000,
                        sigma=sigma, batch_size=4000).double()
    torch.manual_seed(0)
    peer = GradientShap(model).attribute(x, baselines=bases, target=3, n_samples=4000,
                                         stdevs=float(_std(x[0], sigma)))
    assert float((ours - peer).norm() / peer.norm()) < 0.1


def test_gradient_shap_default_baselines_are_zeros_and_a_blurred_copy() -> None:
    model, x = seeded(TinyVGG()), _x(2, 16)
    per_image = torch.stack([torch.zeros_like(x), gaussian_blur(x, 1.6)], dim=1)
    torch.testing.assert_close(
        cl.attribute(model, x, "gradient_shap", target=0, samples=8),
        cl.attribute(model, x, "gradient_shap", target=0, samples=8, baseline=per_image))


def test_gaussian_blur_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _x(2, 12)
    got = gaussian_blur(x, 1.5)
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5), mode="nearest",
                                       truncate=3.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_gradient_shap_refuses_baselines_of_the_wrong_shape() -> None:
    with pytest.raises(MethodError, match="does not fit"):
        cl.attribute(seeded(TinyVGG()), _x(2), "gradient_shap", target=0,
                     baseline=torch.zeros(3, 3, 4, 4))
