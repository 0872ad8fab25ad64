"""Plain-gradient methods against Captum (the peer), in float64, at equal settings.

Closed forms on a linear model and integrated-gradients completeness live in
tests/attribution/test_core.py; here the same methods meet the peer's implementation on
networks with BatchNorm, residual sums, in-place ReLUs and max pooling.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyResNet, TinyVGG, seeded

import convlens as cl


@pytest.fixture(scope="module")
def captum_attr():
    """Captum's attribution module; only the comparisons with the peer skip without it."""
    return pytest.importorskip("captum.attr")

MODELS = {"vgg": TinyVGG, "resnet": TinyResNet}


def _x(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


TARGET = torch.tensor([0, 3, 4])


@pytest.mark.parametrize("model", list(MODELS))
def test_saliency_matches_captum(captum_attr, model: str) -> None:
    net, x = seeded(MODELS[model]()), _x()
    expected = captum_attr.Saliency(net).attribute(x.clone(), target=TARGET, abs=True)
    got = cl.attribute(net, x, "saliency", target=TARGET)
    torch.testing.assert_close(got, expected.float())


@pytest.mark.parametrize("model", list(MODELS))
def test_input_x_gradient_matches_captum(captum_attr, model: str) -> None:
    net, x = seeded(MODELS[model]()), _x()
    expected = captum_attr.InputXGradient(net).attribute(x.clone(), target=TARGET)
    got = cl.attribute(net, x, "input_x_gradient", target=TARGET)
    torch.testing.assert_close(got, expected.float())


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("baseline", ["zeros", "per_sample"])
def test_integrated_gradients_matches_captum_gauss_legendre(captum_attr, model: str,
                                                            baseline: str) -> None:
    net, x = seeded(MODELS[model]()), _x()
    x0 = torch.zeros_like(x) if baseline == "zeros" else _x(seed=4)
    expected, delta = captum_attr.IntegratedGradients(net).attribute(
        x.clone(), baselines=x0, target=TARGET, n_steps=12, method="gausslegendre",
        return_convergence_delta=True)
    got = cl.attribute(net, x, "integrated_gradients", target=TARGET, steps=12,
                       baseline=None if baseline == "zeros" else x0, batch_size=7)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-7)
    # Same quadrature, same completeness gap: sum - (y(x) - y(x0)) agrees with Captum's delta.
    with torch.no_grad():
        gap = (net(x) - net(x0)).gather(1, TARGET.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(got.double().sum(dim=(1, 2, 3)) - gap, delta, rtol=1e-3,
                               atol=1e-5)
