"""ROAD: the imputation against Quantus's (the reference code's sparse solve), the curves on a
linear model, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, seeded

import convlens.metrics as M
from convlens.metrics.core import MetricError
from convlens.metrics.road import linear_imputation


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_imputation_matches_quantus_sparse_solve(fraction: float) -> None:
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 12, 10))
    removed = rng.permutation(120)[: int(120 * fraction)]
    theirs = perturb.noisy_linear_imputation(image.copy(), np.sort(removed), noise=0.0)
    mask = torch.zeros(1, 1, 120, dtype=torch.bool)
    mask[0, 0, torch.from_numpy(removed)] = True
    ours = linear_imputation(torch.from_numpy(image)[None], mask.view(1, 1, 12, 10),
                             tol=1e-12)
    np.testing.assert_allclose(ours[0].numpy(), theirs, rtol=1e-7, atol=1e-8)
    np.testing.assert_array_equal(ours[0].numpy().reshape(3, -1)[:, ~mask.view(-1).numpy()],
                                  image.reshape(3, -1)[:, ~mask.view(-1).numpy()])


def test_float32_imputation_is_close_to_float64() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 3, 20, 20)))
    mask = torch.from_numpy(rng.random((2, 1, 20, 20)) < 0.7)
    exact = linear_imputation(x, mask, tol=1e-12)
    single = linear_imputation(x.float(), mask)
    np.testing.assert_allclose(single.numpy(), exact.numpy(), atol=1e-4)


def test_exact_linear_map_separates_morf_from_lerf() -> None:
    net = seeded(LinearNet((3, 8, 8), 3), 0, torch.float64)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cls = net(x).argmax(1)
    exact = net.fc.weight[cls].view(4, 3, 8, 8) * x
    good = M.road(net, x, exact, noise=0.0)
    bad = M.road(net, x, -exact, noise=0.0)
    assert set(good.curves) == {"morf_probability", "morf_accuracy", "lerf_probability",
                                "lerf_accuracy"}
    assert good.curves["morf_probability"].shape == (4, 9)
    assert (good.values > 0).all() and (good.values > bad.values).all()
    np.testing.assert_allclose(good.values, -bad.values)  # the two orders swap
    rand = M.road(net, x, torch.rand(4, 8, 8, dtype=torch.float64), noise=0.0)
    assert (good.values > rand.values).all()
    acc = good.curves["morf_accuracy"]
    assert set(np.unique(acc)) <= {0.0, 1.0}


def test_noise_is_seeded_and_options_are_checked() -> None:
    net = seeded(LinearNet((3, 8, 8), 3), 0, torch.float32)
    x = torch.randn(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    a = M.road(net, x, maps, percentages=(20, 60), order="morf", seed=3)
    b = M.road(net, x, maps, percentages=(20, 60), order="morf", seed=3)
    np.testing.assert_array_equal(a.values, b.values)
    assert set(a.curves) == {"morf_probability", "morf_accuracy"}
    with pytest.raises(MetricError, match="strictly between 0 and 100"):
        M.road(net, x, maps, percentages=(0, 50))
    with pytest.raises(MetricError, match="order='up'"):
        M.road(net, x, maps, order="up")
