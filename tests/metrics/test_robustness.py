"""Infidelity and max-sensitivity equal Captum's given the same noise; closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, TinyResNet, seeded

import convlens
import convlens.metrics as M


def test_infidelity_matches_captum() -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    net = seeded(TinyResNet(classes=4), 0, torch.float32)
    x = torch.randn(3, 3, 16, 16)
    y = net(x).argmax(1)
    a = convlens.attribute(net, x, "saliency", target=y)
    for normalize in (False, True):
        ours = M.infidelity(net, x, a, y, seed=7, normalize=normalize)
        generator = torch.Generator().manual_seed(7)

        def perturb(inputs: torch.Tensor, generator=generator) -> tuple:
            noise = torch.randn(inputs.shape, generator=generator) * 0.003
            return noise, inputs - noise

        theirs = captum_metrics.infidelity(net, perturb, x, a, target=y, n_perturb_samples=10,
                                           normalize=normalize)
        np.testing.assert_allclose(ours.values, theirs.double().numpy(), rtol=2e-3, atol=1e-10)


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero() -> None:
    net = seeded(LinearNet((3, 4, 4), 3), 0, torch.float64)
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    cls = net(x).argmax(1)
    gradient = net.fc.weight[cls].view(4, 3, 4, 4)
    assert (M.infidelity(net, x, gradient, sigma=0.1).values < 1e-20).all()
    assert (M.infidelity(net, x, gradient * x, sigma=0.1).values > 1e-6).all()


def test_max_sensitivity_matches_captum() -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    net = seeded(TinyResNet(classes=4), 0, torch.float32)
    x = torch.randn(2, 3, 16, 16)
    y = net(x).argmax(1)
    ours = M.max_sensitivity(net, x, "saliency", y, seed=3)
    generator = torch.Generator().manual_seed(3)

    def perturb(inputs: torch.Tensor, radius: float) -> torch.Tensor:
        return inputs + (torch.rand(inputs.shape, generator=generator) * (2 * radius) - radius)

    def explain(inputs: torch.Tensor, target: torch.Tensor) -> tuple:
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (convlens.attribute(net, inputs, "saliency", target=target),)

    theirs = captum_metrics.sensitivity_max(explain, x, perturb_func=perturb, target=y)
    np.testing.assert_allclose(ours.values, theirs.double().numpy(), rtol=1e-4)


def test_max_sensitivity_of_a_linear_models_gradient_is_zero() -> None:
    net = seeded(LinearNet((3, 4, 4), 3), 0, torch.float32)
    x = torch.randn(4, 3, 4, 4)
    assert (M.max_sensitivity(net, x, "saliency").values == 0).all()
    assert (M.max_sensitivity(net, x, "input_x_gradient").values > 0).all()
