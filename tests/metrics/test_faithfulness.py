"""Faithfulness correlation and MuFidelity: 1 for the exact linear attribution, near 0 for
random maps, and equal to Quantus given the same random subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, seeded
from torch import nn

import convlens.metrics as M
from convlens.metrics.core import CONSTANT, generator_for
from convlens.metrics.faithfulness import random_subsets


def _linear(channels: int = 3, n: int = 6):
    net = seeded(LinearNet((channels, 8, 8), 4), 0, torch.float64)
    x = torch.randn(n, channels, 8, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    cls = net(x).argmax(1)
    return net, x, net.fc.weight[cls].view(n, channels, 8, 8) * x


def test_exact_linear_attribution_scores_one() -> None:
    net, x, exact = _linear()
    np.testing.assert_allclose(M.faithfulness_correlation(net, x, exact, subset=8).values, 1.0,
                               atol=1e-10)
    np.testing.assert_allclose(M.mufidelity(net, x, exact, grid=4).values, 1.0, atol=1e-10)


def test_random_maps_score_near_zero() -> None:
    net, x, _ = _linear(n=16)
    noise = torch.rand(16, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fc = M.faithfulness_correlation(net, x, noise, subset=8, runs=200)
    assert abs(fc.mean) < 0.08 and (np.abs(fc.values) < 0.35).all()
    # MuFidelity removes a random number of cells: a zero-mean map is needed (a positive one
    # correlates with how much was removed).
    mu = M.mufidelity(net, x, noise - 0.5, grid=4)
    assert abs(mu.mean) < 0.2


def test_constant_map_is_reported_as_such() -> None:
    net, x, _ = _linear()
    got = M.faithfulness_correlation(net, x, torch.zeros(6, 8, 8), subset=8)
    assert got.undefined == [CONSTANT] * 6 and got.mean is None


def test_matches_quantus_given_the_same_subsets(monkeypatch) -> None:
    """One input channel: Quantus's features (channel elements) are then our pixels."""
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.randn(3, 1, 8, 8)
    maps = torch.rand(3, 1, 8, 8)
    y = net(x).argmax(1)
    runs, subset = 20, 10
    ours = M.faithfulness_correlation(net, x, maps, runs=runs, subset=subset, seed=4)
    subsets = iter(random_subsets(generator_for(4, x.device), runs * 3, 64, subset).numpy())
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(subsets))
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=subset,
                                             perturb_baseline=0.0, return_aggregate=False,
                                             disable_warnings=True)
    theirs = metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy(),
                    device="cpu")
    np.testing.assert_allclose(ours.values, np.asarray(theirs), rtol=1e-4, atol=1e-5)
