"""Randomisation tests: execution order, the user's model untouched, similarity helpers
against SciPy / scikit-image, and the expected outcome on a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, TinyResNet, seeded
from torch import nn

import convlens.metrics as M
from convlens.metrics.core import MetricError, spearman
from convlens.metrics.randomisation import cascade, default_units, ssim


class Reordered(nn.Module):
    """Registers its head before its body but runs the body first."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stem = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(self.stem(x))).flatten(1))


def test_cascade_follows_execution_not_registration() -> None:
    """Quantus's MPRT walks reversed(named_modules()): head last here, before the stem."""
    net = Reordered()
    x = torch.randn(1, 3, 8, 8)
    assert cascade(net, x, None) == ["head", "body", "stem"]
    registration = [n for n, m in reversed(list(net.named_children()))
                    if any(True for _ in m.parameters())]
    assert registration == ["stem", "body", "head"]  # what a registration-order walk does
    assert default_units(TinyResNet()) == ["stem", "layer1", "layer2", "pool", "fc"]


def test_blocks_containers_are_split() -> None:
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    net.add_module("blocks", nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3)),
                                           nn.Sequential(nn.Conv2d(4, 4, 3))))
    assert default_units(net) == ["stem", "blocks.0", "blocks.1"]


def test_users_model_is_never_changed(snapshot) -> None:
    net = seeded(TinyResNet(), 0, torch.float32).train()
    before = snapshot(net)
    got = M.model_randomisation(net, torch.randn(2, 3, 16, 16), "gradcam")
    before.assert_unchanged()
    assert list(got.stages) == ["fc", "+layer2", "+layer1", "+stem"]
    np.testing.assert_allclose(got.values, np.mean(list(got.stages.values()), axis=0))


def test_gradient_of_a_randomised_linear_model_decorrelates() -> None:
    """|d y_c / d x| = |w_c|: a fresh w_c is independent of the trained one (rho ~ 0)."""
    net = seeded(LinearNet((3, 8, 8), 4), 0, torch.float32)
    x = torch.randn(4, 3, 8, 8)
    got = M.model_randomisation(net, x, "saliency")
    assert list(got.stages) == ["fc"]
    assert (np.abs(got.values) < 0.3).all()
    same = M.model_randomisation(net, x, "saliency", seed=1)
    assert not np.array_equal(same.values, got.values)  # the seed matters
    again = M.model_randomisation(net, x, "saliency", seed=1)
    np.testing.assert_array_equal(same.values, again.values)


def test_stages_and_units_options() -> None:
    net = seeded(TinyResNet(), 0, torch.float32)
    x = torch.randn(1, 3, 16, 16)
    assert list(M.model_randomisation(net, x, "saliency", stages=2).stages) == ["fc", "+layer2"]
    assert list(M.model_randomisation(net, x, "saliency", stages=["layer1"]).stages) == [
        "+layer1"]
    every = M.model_randomisation(net, x, "saliency")
    some = M.model_randomisation(net, x, "saliency", stages=["fc", "layer1"])
    assert list(some.stages) == ["fc", "+layer1"]
    np.testing.assert_allclose(some.stages["+layer1"], every.stages["+layer1"])
    assert list(M.model_randomisation(net, x, "saliency", units=["stem", "fc"]).stages) == [
        "fc", "+stem"]
    with pytest.raises(MetricError, match="not a unit of the cascade"):
        M.model_randomisation(net, x, "saliency", stages=["nope"])
    with pytest.raises(MetricError, match="not a module of the model"):
        M.model_randomisation(net, x, "saliency", units=["nope"])


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (3, 40)).astype(float)
    b = rng.normal(size=(3, 40))
    got = spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = [spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isnan(spearman(torch.ones(1, 5), torch.rand(1, 5)).numpy()).all()


def test_ssim_matches_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a, b = rng.random((2, 20, 24)), rng.random((2, 20, 24))
    b[0] = 0.7 * a[0] + 0.3 * b[0]
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for i in range(2):
        data_range = max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min())
        assert got[i] == pytest.approx(structural_similarity(a[i], b[i], data_range=data_range),
                                       rel=1e-10)


def test_random_logit_on_a_linear_model() -> None:
    """Saliency for class c is |w_c|: SSIM against |w_other| of the drawn class."""
    net = seeded(LinearNet((1, 8, 8), 5), 0, torch.float64)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    got = M.random_logit(net, x, "saliency", target=0, seed=2)
    assert (got.values < 0.5).all()
    same = M.random_logit(net, x, "saliency", target=0, seed=2, similarity="spearman")
    assert (np.abs(same.values) < 0.5).all()
