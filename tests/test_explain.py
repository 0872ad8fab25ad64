"""explain(), Explanation presentation, and preprocessing geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import TinyVGG, seeded
from PIL import Image

import convlens as cl
from convlens.models.preprocessing import Geometry, Preprocessing, map_to_original
from convlens.present.heatmap import scale_of


@pytest.fixture
def clf() -> cl.Classifier:
    module = seeded(TinyVGG(classes=4), dtype=torch.float32)
    return cl.Classifier(module, labels=["ant", "bee", "cat", "dog"], input_size=32,
                         resize_size=40, device="cpu")


def _photo(width: int = 60, height: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_center_crop_geometry_maps_back_to_the_photo() -> None:
    pre = Preprocessing(input_size=32, resize_size=40)
    image = _photo(80, 40)  # shorter side 40 -> scale 1, crop 32x32 from 80x40 at (24, 4)
    cropped, geometry = pre.resize_image(image)
    assert cropped.size == (32, 32)
    assert geometry.box == (24.0, 4.0, 56.0, 36.0)
    assert np.array_equal(np.asarray(cropped), np.asarray(image)[4:36, 24:56])
    heat = map_to_original(torch.ones(8, 8), geometry)
    assert heat.shape == (40, 80)
    assert heat[4:36, 24:56].min() == 1 and heat[:, :24].max() == 0 and heat[:4].max() == 0


def test_pad_geometry_extends_past_the_photo() -> None:
    pre = Preprocessing(input_size=32, resize="pad")
    _, geometry = pre.resize_image(_photo(64, 32))  # scale 0.5 -> 32x16 pasted at y=8
    assert geometry.box == (0.0, -16.0, 64.0, 48.0)
    heat = map_to_original(torch.arange(32.0).view(32, 1).expand(32, 32), geometry)
    assert heat.shape == (32, 64)
    assert heat[0, 0] > 7 and heat[-1, 0] < 25  # rows 8..23 of the input cover the photo


def test_squash_geometry_is_the_whole_photo() -> None:
    _, geometry = Preprocessing(input_size=32, resize="squash").resize_image(_photo(50, 20))
    assert geometry == Geometry((50, 20), (0.0, 0.0, 50, 20))


def test_explanation_heatmaps_are_unit_range_at_the_photo_size(clf: cl.Classifier) -> None:
    photos = [_photo(60, 40, 0), _photo(45, 70, 1)]
    exps = cl.explain(clf, photos, ["gradcam", "saliency", "integrated_gradients"], steps=4)
    assert len(exps) == 2
    for exp, photo in zip(exps, photos):
        for method in exp.methods:
            heat = exp.heatmap(method)
            assert heat.shape == (photo.height, photo.width)
            assert heat.min() >= 0 and heat.max() <= 1 and np.isfinite(heat).all()
            if not exp.empty(method):  # resampling to the photo may miss the exact peak
                assert heat.max() > 0.5
        assert exp.overlay("gradcam").size == photo.size
        assert exp.target_label in clf.labels
        assert exp.predictions[0][1] >= exp.predictions[-1][1]


def test_batch_normalisation_shares_one_scale() -> None:
    module = seeded(TinyVGG(classes=4), dtype=torch.float32)
    clf = cl.Classifier(module, input_size=32, resize="squash", mean=(0, 0, 0), std=(1, 1, 1),
                        device="cpu")
    bright = _photo(32, 32)
    dim = Image.fromarray((np.asarray(bright) // 10).astype(np.uint8))  # x / 10: weaker map
    exps = cl.explain(clf, [bright, dim], ["input_x_gradient"], target=0, normalize="batch")
    method = "input_x_gradient"
    scales = {exp.scales[method] for exp in exps}
    assert len(scales) == 1
    own = [float(scale_of(exp.raw_map(method)[None], "image", 99.5)[0]) for exp in exps]
    assert max(own) == pytest.approx(scales.pop(), rel=1e-6)
    # The weaker map looks weaker: dimmer than with its own scale, never brighter.
    shared, alone = exps[1].heatmap(method), exps[1].heatmap(method, scale=own[1])
    assert (shared <= alone + 1e-6).all()
    assert shared.mean() < 0.5 * alone.mean()


def test_top_k_gives_one_explanation_per_class(clf: cl.Classifier) -> None:
    exps = cl.explain(clf, [_photo()], ["gradcam"], target="top:3")
    assert [e.target for e in exps] == [clf.labels.index(label)
                                        for label, _ in exps[0].predictions[:3]]
    direct = cl.explain(clf, [_photo()], ["gradcam"], target=exps[1].target)[0]
    torch.testing.assert_close(direct.attributions["gradcam"], exps[1].attributions["gradcam"])


def test_targets_by_name_and_per_image(clf: cl.Classifier) -> None:
    exps = cl.explain(clf, [_photo(), _photo(seed=3)], "saliency", target=["bee", 3])
    assert [e.target_label for e in exps] == ["bee", "dog"]


def test_an_all_zero_map_is_empty_and_finite(clf: cl.Classifier) -> None:
    exp = cl.explain(clf, [_photo()], ["saliency"])[0]
    exp.attributions["saliency"] = torch.zeros_like(exp.attributions["saliency"])
    exp.scales["saliency"] = 0.0
    assert exp.empty("saliency")
    heat = exp.heatmap("saliency")
    assert np.isfinite(heat).all() and heat.max() == 0
    grid = exp.grid()
    assert grid.width > grid.height


def test_save_and_notebook_display(clf: cl.Classifier, tmp_path) -> None:
    exp = cl.explain(clf, [_photo()], ["gradcam", "saliency"], names=["ph"])[0]
    written = exp.save(tmp_path)
    assert sorted(p.name for p in written) == ["ph.gradcam.png", "ph.grid.png",
                                               "ph.saliency.png"]
    assert exp._repr_png_().startswith(b"\x89PNG")
    assert "ph: " in exp.title


def test_explain_leaves_a_training_model_in_training_mode(clf: cl.Classifier) -> None:
    clf.module.train()
    cl.explain(clf, [_photo()], ["gradcam"])
    assert clf.module.training
    clf.predict([_photo()])
    assert clf.module.training


def test_maps_with_an_offset_are_shown_from_their_minimum(clf: cl.Classifier) -> None:
    exp = cl.explain(clf, [_photo()], ["rise"], masks=32)[0]
    raw = exp.raw_map("rise")
    assert cl.get_method("rise").offset
    assert float(raw.min()) == 0.0 and float(raw.max()) > 0
    assert exp.attributions["rise"].min() > 0  # the raw attribution keeps its offset
