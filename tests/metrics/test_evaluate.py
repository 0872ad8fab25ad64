"""``evaluate``: summaries with bootstrap intervals, rankings, cards, files, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, TinyResNet, seeded

import convlens
import convlens.metrics as M
from convlens.errors import MethodError
from convlens.metrics.core import MetricError
from convlens.metrics.evaluate import bootstrap_interval


@pytest.fixture
def classifier():
    net = seeded(TinyResNet(classes=5), 0, torch.float32)
    return convlens.Classifier(net, labels=[f"c{i}" for i in range(5)], input_size=16,
                               name="tiny")


FAST_OPTIONS = {"deletion": {"step": 32}, "insertion": {"step": 32, "blur_kernel": 3},
                "faithfulness_correlation": {"subset": 16, "runs": 20}}


def fast(*metrics: str) -> dict:
    return {k: v for k, v in FAST_OPTIONS.items() if k in metrics}


def test_summaries_rankings_cards(classifier, snapshot) -> None:
    # seeded: the direct comparison below attributes all five images at once and evaluate two
    # at a time, so a near-tie in a map may order two pixels differently (float sums); an
    # unseeded input made the test depend on the tests before it
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = snapshot(classifier.module)
    ev = convlens.evaluate(classifier, x, ["gradcam", "saliency"],
                           ["deletion", "insertion", "faithfulness_correlation", "randomisation"],
                           metric_options=fast("deletion", "insertion",
                                               "faithfulness_correlation"), image_batch=2)
    before.assert_unchanged()
    assert len(ev.summaries) == 8
    for row in ev.summaries:
        assert row.count == 5 and row.low <= row.mean <= row.high
        s = ev.scores[(row.method, row.metric)]
        assert row.mean == pytest.approx(np.nanmean(s.values))
    ranking = ev.ranking("deletion")
    assert [r.rank for r in ranking] == [1, 2]
    assert ranking[0].mean <= ranking[1].mean  # lower deletion is better
    ranking = ev.ranking("insertion")
    assert ranking[0].mean >= ranking[1].mean
    card = ev.cards["deletion"]
    assert card["options"]["step"] == 32 and card["preset"] is None
    assert card["model"] == "tiny" and card["input_shape"] == [3, 16, 16]
    assert card["methods"]["saliency"] == {}
    # Per image results equal the functional core's on the same maps.
    maps = convlens.attribute(classifier, x, "gradcam")
    direct = M.deletion(classifier, x, maps, step=32)
    np.testing.assert_allclose(ev.scores[("gradcam", "deletion")].values, direct.values)


def test_settings_id_changes_with_the_settings(classifier) -> None:
    x = torch.randn(2, 3, 16, 16)
    options = fast("deletion")
    a = convlens.evaluate(classifier, x, ["saliency"], ["deletion"], metric_options=options)
    b = convlens.evaluate(classifier, x[:1], ["saliency"], ["deletion"], metric_options=options)
    c = convlens.evaluate(classifier, x, ["saliency"], ["deletion:xplique"])
    assert a.summaries[0].settings_id == b.summaries[0].settings_id  # same settings
    assert a.summaries[0].settings_id != c.summaries[0].settings_id
    assert c.cards["deletion:xplique"]["options"]["steps"] == 10


def test_files_json_html_and_notebook(classifier, tmp_path) -> None:
    x = torch.randn(3, 3, 16, 16)
    ev = convlens.evaluate(classifier, x, ["gradcam", "saliency"],
                           ["deletion", "road", "randomisation"], metric_options=fast("deletion"),
                           names=["a", "b", "c"])
    written = ev.save(tmp_path)
    names = {p.name for p in written}
    assert {"evaluation.json", "evaluation.html", "curves_deletion.png", "curves_road.png",
            "randomisation_gradcam.png", "randomisation_saliency.png"} <= names
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert data["images"] == ["a", "b", "c"] and len(data["summary"]) == 6
    entry = next(r for r in data["results"] if r["metric"] == "road")
    assert len(entry["curves"]["morf_probability"]) == 3
    page = (tmp_path / "evaluation.html").read_text()
    assert "randomisation" in page and "settings id" in page and "data:image/png" in page
    assert "<html" not in ev._repr_html_() and "gradcam" in ev._repr_html_()


def test_constant_maps_are_counted_not_averaged() -> None:
    net = seeded(LinearNet((3, 8, 8), 3), 0, torch.float32)
    x = torch.zeros(2, 3, 8, 8)  # input_x_gradient = 0 everywhere
    ev = convlens.evaluate(net, x, ["input_x_gradient"], ["deletion", "sparseness"],
                           metric_options={"deletion": {"step": 8}})
    row = ev.summary("input_x_gradient", "deletion")
    assert row.mean is None and row.count == 0 and row.rank is None
    assert list(row.undefined.values()) == [2] and "constant map" in next(iter(row.undefined))
    assert json.loads(ev.to_json())["results"][0]["per_image"] == [None, None]


def test_bad_requests_get_one_clear_error(classifier) -> None:
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(MetricError, match="unknown metric 'delet'; valid metrics: deletion"):
        convlens.evaluate(classifier, x, ["saliency"], ["delet"])
    with pytest.raises(MetricError, match="no preset 'rice'"):
        convlens.evaluate(classifier, x, ["saliency"], ["deletion:rice"])
    with pytest.raises(MetricError, match="has no option 'stp'"):
        convlens.evaluate(classifier, x, ["saliency"], ["deletion"],
                          metric_options={"deletion": {"stp": 3}})
    with pytest.raises(MetricError, match="not among the requested metrics"):
        convlens.evaluate(classifier, x, ["saliency"], ["deletion"],
                          metric_options={"insertion": {"step": 3}})
    with pytest.raises(MethodError):
        convlens.evaluate(classifier, x, ["salience"], ["deletion"])


def test_bootstrap_interval() -> None:
    values = np.random.default_rng(0).normal(size=400)
    mean, low, high = bootstrap_interval(values, 2000, 0)
    assert low < mean < high and high - low == pytest.approx(2 * 1.96 / 20, rel=0.15)
    assert bootstrap_interval(np.array([np.nan, 2.0]), 100, 0) == (2.0, 2.0, 2.0)
    assert bootstrap_interval(np.array([np.nan]), 100, 0) == (None, None, None)


def test_every_registered_metric_runs_and_has_a_reference(classifier) -> None:
    x = torch.randn(2, 3, 16, 16)
    options = {**FAST_OPTIONS, "mufidelity": {"grid": 4, "samples": 20},
               "road": {"percentages": [50]}, "max_sensitivity": {"samples": 2},
               "infidelity": {"samples": 2}}
    keys = [m.name for m in M.metrics()]
    assert keys[:2] == ["deletion", "insertion"]
    ev = convlens.evaluate(classifier, x, ["gradcam"], keys,
                           metric_options={k: v for k, v in options.items() if k in keys})
    for metric in M.metrics():
        assert metric.reference and metric.summary
        assert ev.summary("gradcam", metric.name).count == 2
