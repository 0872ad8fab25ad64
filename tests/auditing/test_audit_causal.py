"""The causal check (convlens.auditing.causal): regions, controls, intervals, the verdict,
and the forwards run through an engine."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from planted_bias import CLASSES, TAG_CLASS, planted_case, planted_classifier, write_planted_folder
from torch import nn

import convlens as cl
from convlens.auditing import causal as ca
from convlens.engines.local import LocalEngine
from convlens.engines.ray import UnitActor, decode_units
from convlens.errors import ConvlensError
from convlens.io.datasets import read_dataset


class CornerNet(nn.Module):
    """Class 1 when the top-left 4x4 corner is bright, else class 0; the rest is ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        score = self.scale * (corner - 0.5)
        return torch.stack([-score, score], dim=1)


def _corner_images(count: int = 40) -> torch.Tensor:
    x = torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.3
    x[:, :, :4, :4] = 1.0
    return x


def test_regions_are_the_hottest_pixels_and_never_above_a_quarter():
    heat = np.full((7, 7), 0.01)
    heat[5:, 5:] = 1.0
    heat[0, 0] = 0.2
    regions = ca.cluster_regions(heat, (32, 32))
    assert regions.areas == (1 / 16, 1 / 8, 1 / 4)
    assert all(a <= 0.25 for a in regions.areas)
    assert regions.hot[0, 31, 31] and not regions.hot[0, 0, 0]
    assert not (regions.hot & regions.cold).any()
    assert list(regions.shares) == sorted(regions.shares) and regions.shares[-1] < 1
    # the hot region is the most relevance an area that size can hold
    up = ca.upsample_heat(heat, (32, 32))
    top = np.sort(up.numpy().ravel())[::-1][:64].sum() / up.sum().item()
    assert regions.shares[0] == pytest.approx(top)
    with pytest.raises(ConvlensError, match=r"\(0, 0.25\]"):
        ca.cluster_regions(heat, (32, 32), sizes=(0.5,))


def test_wilson_and_sign_test_match_hand_computed_values():
    low, high = ca.wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.27753, abs=1e-5)
    low, high = ca.wilson(8, 10)
    assert (low, high) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert ca.wilson(0, 0) == (0.0, 1.0)
    assert ca.sign_test(10, 0) == pytest.approx(1 / 1024)
    assert ca.sign_test(3, 3) == pytest.approx(sum(math.comb(6, k) for k in range(3, 7)) / 64)
    assert ca.sign_test(0, 0) == 1.0


def test_a_region_the_model_ignores_is_not_shown_to_matter(snapshot):
    """CornerNet reads the top-left corner; the mean map points at the bottom-right (its
    relevance fits in ~10% of the image: the larger sizes keep only relevant pixels)."""
    model = CornerNet().train()
    snap = snapshot(model)
    heat = np.zeros((8, 8))
    heat[6:, 6:] = 1.0
    result = ca.causal_check(model, _corner_images(), heat, seed=0, batch_size=16)
    snap.assert_unchanged()
    assert result.verdict == "not shown" and result.flip_rate == 0.0
    text = result.sentence()
    assert result.table[-1].area < 0.25             # zero-relevance pixels are never hot
    assert text.startswith("not shown to matter") and "(6.2%, 9.8% of the image)" in text
    assert "random region" in text


def test_close_rates_are_not_called_different():
    """The user's case: the hot region flips 87%, a random one 81%: 'not shown', with the
    intervals kept in the table, and the table survives JSON and comes back."""
    regions = ca.cluster_regions(np.eye(4), (16, 16), sizes=(0.25,))
    rng = np.random.default_rng(0)
    flips = np.zeros((100, 1, 2, 3), bool)
    flips[:87, 0, :, 0] = True
    flips[rng.permutation(100)[:81], 0, :, 1] = True
    flips[:10, 0, :, 2] = True
    result = ca.summarise(flips, regions)
    assert result.verdict == "not shown"
    assert (result.flip_rate, result.random_flip_rate) == (0.87, 0.81)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    row = data["table"][0]
    assert row["hot"]["ci"][0] < row["random"]["ci"][1]          # the intervals overlap
    assert row["hot"]["ci"] == [pytest.approx(v, abs=1e-6) for v in ca.wilson(87, 100)]
    assert data["verdict"] == "not shown" and "not shown to matter" in data["sentence"]
    assert ca.CausalResult.from_dict(data).to_dict() == data


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """The planted model's tagged mistakes (circles and triangles called squares because of
    the tag), written as files, with their Grad-CAM mean map."""
    case = planted_case()
    planted = write_planted_folder(tmp_path_factory.mktemp("causal"), case, every=2)
    classifier = planted_classifier(planted)
    tag = CLASSES.index(TAG_CLASS)
    dataset = read_dataset(planted["data"])
    entries = [e for e in dataset.entries
               if e.relpath.endswith("-tag.png") and e.label != TAG_CLASS]
    x = classifier.prepare([e.path for e in entries]).x
    with torch.no_grad():
        predicted = case.model(x).argmax(1)
    keep = [k for k in range(len(entries)) if int(predicted[k]) == tag]
    raw = cl.attribute(case.model, x[keep], "gradcam", target=predicted[keep])
    heat = raw.clamp_min(0).mean(dim=(0, 1)).numpy()
    return (classifier, [entries[k] for k in keep], x[keep], predicted[keep].tolist(), heat)


def test_a_model_that_uses_a_small_tag_matters_at_the_small_sizes(tagged):
    classifier, entries, x, predicted, heat = tagged
    result = ca.causal_check(classifier, x, heat, predicted, seed=3)
    assert result.verdict == "matters" and result.region_fraction == 1 / 16
    for row in result.table:
        if row.infill == "blur" and row.size <= 1 / 8:
            low = row.interval("hot")[0]
            assert low > row.interval("random")[1] and low > row.interval("cold")[1]
    assert result.sentence().startswith("the region matters")


class SpyEngine(LocalEngine):
    """The local engine, recording what it was asked to run."""

    def __init__(self) -> None:
        super().__init__(workers=0)
        self.factories: list[object] = []

    def map_units(self, entries, preprocessing, factory, **options):
        self.factories.append(factory)
        yield from super().map_units(entries, preprocessing, factory, **options)


def test_the_check_runs_through_the_engine_whatever_the_batching(tagged, snapshot):
    classifier, entries, x, predicted, heat = tagged
    model = classifier.module
    model.train()
    model.fc.weight.requires_grad_(False)
    snap = snapshot(model)
    keys = [e.relpath for e in entries]
    try:
        results = []
        for batch_size in (2, 64):
            engine = SpyEngine()
            results.append(ca.run_check(engine, classifier, entries, keys, predicted, heat,
                                        seed=5, batch_size=batch_size))
            (factory,) = engine.factories
            assert factory.function is ca.causal_batch
        snap.assert_unchanged()
    finally:
        model.fc.weight.requires_grad_(True)
        model.eval()
    assert results[0].to_dict() == results[1].to_dict()
    assert results[0].verdict == "matters" and results[0].members == len(entries)
    # the same forwards in memory give the same table
    assert ca.causal_check(classifier, x, heat, predicted, keys=keys,
                           seed=5).to_dict() == results[0].to_dict()
    # the Ray actor runs a pickled copy of the factory on Ray's decoded units: same flips
    rows = {"unit": np.array([0]), "start": np.array([0]),
            "entries": np.array([pickle.dumps(entries)], dtype=object)}
    decoded = decode_units(rows, preprocessing=classifier.preprocessing, salt="",
                           skip=frozenset(), max_pixels=None)
    out = UnitActor(pickle.loads(pickle.dumps(factory)))(decoded)
    index, flips, restored = pickle.loads(out["result"][0])
    regions = ca.cluster_regions(heat, (32, 32))
    assert index == list(range(len(entries))) and (restored == -1).all()  # no labels given
    assert ca.summarise(flips, regions).to_dict() == results[1].to_dict()
