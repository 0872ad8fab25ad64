"""Suspicion scores on cases with known answers (the causal check: test_audit_causal.py)."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.auditing import suspicion as su
from convlens.errors import ConvlensError


def test_half_mass_area_uniform_point_and_empty():
    assert su.half_mass_area(np.ones((10, 10))) == 0.5
    point = np.zeros((10, 10))
    point[3, 4] = 1
    assert su.half_mass_area(point) == 0.01
    assert su.half_mass_area(np.zeros((4, 4))) == 1.0


def test_score_parts_follow_the_documented_formula():
    maps = np.zeros((8, 4, 4))
    maps[:6, 0, 0] = 1.0                      # cluster 0: all mass in one corner pixel
    maps[6:] = 1.0                            # cluster 1: uniform
    clusters = np.array([0] * 6 + [1] * 2)
    correct = [False, False, False, True, True, None, True, True]
    scores = {s.cluster: s for s in su.score_group("cat", maps, clusters, correct)}
    corner, uniform = scores[0], scores[1]
    assert corner.error_rate == pytest.approx(3 / 5)   # None left out
    assert corner.area == pytest.approx(1 / 16)
    assert corner.concentration == pytest.approx(1 - 2 / 16)
    assert corner.isolation == pytest.approx(1 - 0.25)  # cosine(e_0, uniform) = 1/4
    assert corner.support == pytest.approx(6 / 11)
    assert corner.suspicion == pytest.approx(6 / 11 * np.mean([3 / 5, 1 - 2 / 16, 0.75]))
    assert uniform.error_rate == 0 and uniform.concentration == 0
    assert "60% of its 6 members are mistakes" in corner.why()
    assert su.rank_clusters([uniform, corner])[0] is corner


def test_without_labels_error_rate_is_left_out():
    maps = np.ones((3, 2, 2))
    (score,) = su.score_group("x", maps, np.zeros(3, int), None)
    assert score.error_rate is None and score.isolation == 0
    assert score.suspicion == pytest.approx(3 / 8 * 0.0)
    assert "mistakes" not in score.why()


def test_score_group_checks_shapes():
    with pytest.raises(ConvlensError, match="maps"):
        su.score_group("x", np.ones((3, 4)), np.zeros(3, int))
