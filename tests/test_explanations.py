"""explain(), Explanation presentation, and preprocessing geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.errors import TargetError
from convlens.preprocessing import Geometry, Preprocessing, map_to_original
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


# ---- batching, streaming and the shared scale -----------------------------------------------

def _spy_rows(monkeypatch) -> list[int]:
    import sys

    explain_module = sys.modules["convlens.explanations"]  # the package's `explain` is the function
    rows: list[int] = []
    original = explain_module.attribute

    def spy(model, x, *args, **kwargs):
        rows.append(x.shape[0])
        return original(model, x, *args, **kwargs)

    monkeypatch.setattr(explain_module, "attribute", spy)
    return rows


def test_explain_batches_image_target_rows(clf: cl.Classifier, monkeypatch) -> None:
    photos = [_photo(seed=s) for s in range(5)]
    whole = cl.explain(clf, photos, ["gradcam", "saliency"], target="top:3", batch_size=16)
    rows = _spy_rows(monkeypatch)
    small = cl.explain(clf, photos, ["gradcam", "saliency"], target="top:3", batch_size=2)
    assert rows and max(rows) <= 2 and sum(rows) == 15
    assert [(e.name, e.target) for e in small] == [(e.name, e.target) for e in whole]
    for a, b in zip(small, whole):
        for method in a.methods:
            torch.testing.assert_close(a.attributions[method], b.attributions[method])


def test_explanations_of_files_keep_the_path_not_the_pixels(clf: cl.Classifier, tmp_path
                                                            ) -> None:
    path = tmp_path / "big.png"
    _photo(1500, 1100).save(path)
    exp = cl.explain(clf, [path], ["gradcam"])[0]
    assert exp.photo is None and exp.source == path
    assert exp.image.size == (1500, 1100)  # decoded on demand
    assert exp.heatmap().shape == (1100, 1500)  # the original size, via the geometry
    assert max(exp.overlay().size) == 1024  # drawn on a display copy
    assert exp.overlay().size == exp.display_image().size


def test_iter_explain_streams_the_same_explanations(clf: cl.Classifier) -> None:
    photos = [_photo(seed=s) for s in range(3)]
    stream = cl.iter_explain(clf, photos, ["saliency"], batch_size=1)
    assert not isinstance(stream, list)
    first = next(stream)
    rest = list(stream)
    listed = cl.explain(clf, photos, ["saliency"])
    assert len(rest) == 2
    for a, b in zip([first, *rest], listed):
        torch.testing.assert_close(a.attributions["saliency"], b.attributions["saliency"])
        assert a.scales == pytest.approx(b.scales, rel=1e-6)
    with pytest.raises(cl.ConvlensError, match="list"):
        next(cl.iter_explain(clf, photos, ["saliency"], normalize="batch"))


def test_batch_scale_does_not_depend_on_the_batch_size(clf: cl.Classifier) -> None:
    from convlens.present.heatmap import image_peaks

    photos = [_photo(seed=s) for s in range(5)]
    one = cl.explain(clf, photos, ["saliency", "gradcam"], normalize="batch", batch_size=1)
    all_ = cl.explain(clf, photos, ["saliency", "gradcam"], normalize="batch", batch_size=16)
    for method, percentile in (("saliency", 99.5), ("gradcam", 100.0)):
        (shared,) = {e.scales[method] for e in one}  # one scale, whatever the batch size
        (same,) = {e.scales[method] for e in all_}
        assert shared == pytest.approx(same, rel=1e-6)  # float32 batched-conv rounding
        peaks = image_peaks(torch.stack([e.raw_map(method) for e in all_]), percentile)
        assert shared == pytest.approx(float(peaks.max()), rel=1e-6)
        assert [e.peaks[method] for e in one] == pytest.approx(peaks.tolist(), rel=1e-6)


def test_image_peaks_is_each_maps_percentile_peak() -> None:
    from convlens.present.heatmap import image_peaks

    maps = torch.stack([torch.arange(200.0).view(10, 20), -torch.arange(200.0).view(10, 20) * 2])
    torch.testing.assert_close(image_peaks(maps), torch.tensor([199.0, 398.0]))
    torch.testing.assert_close(image_peaks(maps, 50.0), torch.tensor([99.0, 198.0]))
    sparse = torch.zeros(1, 10, 10)
    sparse[0, 0, 0] = 3.0
    assert float(image_peaks(sparse, 99.5)[0]) == 3.0  # a zero percentile falls back to the max


def test_top_k_beyond_the_class_count_is_refused(clf: cl.Classifier) -> None:
    with pytest.raises(TargetError, match="it has 4 classes"):
        cl.explain(clf, [_photo()], ["gradcam"], target="top:2000")


def test_class_grid_draws_the_classes_side_by_side(clf: cl.Classifier) -> None:
    exps = cl.explain(clf, [_photo(), _photo(seed=1)], ["gradcam", "saliency"], target="top:3")
    grid = cl.class_grid(exps[:3])
    single = exps[0].grid()
    assert grid.width > single.width and grid.height > single.height  # 3 columns, 2 rows
    with pytest.raises(ValueError, match="one photo"):
        cl.class_grid(exps[2:4])


def test_explain_a_score_function(clf: cl.Classifier) -> None:
    def bee_probability(out: torch.Tensor) -> torch.Tensor:
        return (out[:, 1] / 10).sigmoid()  # unsaturated: a visible gradient

    exp = cl.explain(clf, [_photo()], ["saliency", "gradcam"], target=bee_probability)[0]
    assert exp.target == -1 and exp.target_label == "bee_probability"
    assert np.isnan(exp.probability) and "score" in exp.title
    x = clf.preprocess([_photo()])
    assert exp.score == pytest.approx(float((clf.logits(x)[0, 1] / 10).sigmoid()), rel=1e-5)
    direct = cl.attribute(clf, x, "saliency", target=bee_probability)[0]
    torch.testing.assert_close(exp.attributions["saliency"], direct)
    with pytest.raises(TargetError, match="needs a class index"):
        cl.explain(clf, [_photo()], ["rise"], target=bee_probability)


# ---- notes ---------------------------------------------------------------------------------

def test_a_one_pixel_photo_gets_a_note_and_a_warning(clf: cl.Classifier) -> None:
    with pytest.warns(cl.ConvlensWarning, match="1x1 pixels"):
        exp = cl.explain(clf, [_photo(1, 1)], ["saliency"])[0]
    assert any("the photo is 1x1 pixels" in note for note in exp.notes)


def test_an_all_zero_map_gets_a_note(clf: cl.Classifier) -> None:
    with torch.no_grad():
        clf.module.classifier[1].weight.zero_()  # no gradient reaches the features
    with pytest.warns(cl.ConvlensWarning, match="gradcam map is all zero"):
        exp = cl.explain(clf, [_photo()], ["gradcam", "saliency"])[0]
    assert sum("map is all zero" in note for note in exp.notes) == 2
    healthy = cl.Classifier(seeded(TinyVGG(classes=4), dtype=torch.float32), input_size=32,
                            device="cpu")
    assert cl.explain(healthy, [_photo()], ["saliency"])[0].notes == []


def test_explain_a_model_returning_a_dict() -> None:
    class DictNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyVGG(classes=4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"aux": x.mean(dim=(1, 2, 3)), "logits": self.net(x)}

    module = seeded(DictNet(), dtype=torch.float32)
    clf = cl.Classifier(module, input_size=32, device="cpu", output="logits")
    plain = cl.Classifier(module.net, input_size=32, device="cpu")
    got = cl.explain(clf, [_photo()], ["gradcam", "saliency"], layer="net.features")[0]
    want = cl.explain(plain, [_photo()], ["gradcam", "saliency"], layer="features")[0]
    assert got.target == want.target and got.predictions == want.predictions
    for method in ("gradcam", "saliency"):
        torch.testing.assert_close(got.attributions[method], want.attributions[method])
    with pytest.raises(cl.ConvlensError, match="Classifier"):
        cl.explain(clf, [_photo()], ["saliency"], output="aux")
