"""Complexity and sparseness against Quantus; an all-zero map is reported, not NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convlens.metrics as M
from convlens.metrics.complexity import ZERO


def test_match_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 10, 10)).astype(np.float32)
    maps = rng.normal(size=(4, 1, 10, 10)).astype(np.float32) ** 3
    for ours, theirs in ((M.complexity, quantus.Complexity), (M.sparseness, quantus.Sparseness)):
        expected = theirs(disable_warnings=True)(model=None, x_batch=x, y_batch=np.zeros(4, int),
                                                 a_batch=maps.copy(), device="cpu")
        got = ours(None, torch.from_numpy(x), torch.from_numpy(maps)).values
        np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_closed_forms_and_zero_maps() -> None:
    x = torch.zeros(3, 3, 4, 4)
    maps = torch.zeros(3, 4, 4)
    maps[0] = 1.0          # uniform: entropy log 16, Gini 0
    maps[1, 2, 3] = -5.0   # one pixel: entropy 0, Gini 1 - 1/n
    c, s = M.complexity(None, x, maps), M.sparseness(None, x, maps)
    assert c.values[0] == pytest.approx(np.log(16)) and s.values[0] == pytest.approx(0.0)
    assert c.values[1] == pytest.approx(0.0) and s.values[1] == pytest.approx(15 / 16)
    assert c.undefined[2] == ZERO and s.undefined[2] == ZERO and np.isnan(s.values[2])
