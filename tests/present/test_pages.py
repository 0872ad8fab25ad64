"""The explanation page (present/pages.py, views.py, page.html.j2) and presentation errors."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.attribution.registry import reduce_channels
from convlens.errors import ConvlensError, InputShapeError
from convlens.present import figures, heatmap
from convlens.present.pages import CSP, relative_src, write_explain_page
from convlens.present.views import (
    PIXEL_CMAP,
    colorbar,
    dimmed_overlay,
    is_pixel_level,
    map_image,
    save_readable_maps,
)

METHODS = ["gradcam", "saliency", "occlusion"]


class _Images(HTMLParser):
    """Collects every <img>'s attributes, every <a href> and the CSP meta tag."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.csp: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values)
        elif tag == "a":
            self.links.append(values.get("href") or "")
        elif tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content")


def _parse(path: Path) -> _Images:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _record(explanation: cl.Explanation, path: Path, files: list[Path]) -> dict:
    """A record in the schema of ExplainJob._record (results.json)."""
    return {
        "path": str(path),
        "name": explanation.name,
        "predictions": [{"label": label, "probability": round(p, 6)}
                        for label, p in explanation.predictions],
        "target": {"index": explanation.target, "label": explanation.target_label,
                   "probability": round(explanation.probability, 6)},
        "empty_maps": [m for m in explanation.methods if explanation.empty(m)],
        "scales": {m: explanation.scales.get(m) for m in explanation.methods},
        "files": {f.name.split(".")[-2]: f.name for f in files},
    }


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, dict, list[dict]]:
    """Three photos explained by the tiny model, files written as the explain job does."""
    module = seeded(TinyVGG(classes=4), dtype=torch.float32)
    clf = cl.Classifier(module, labels=["ant", "bee", "cat", "<b>dog</b>"], input_size=32,
                        resize_size=40, device="cpu")
    rng = np.random.default_rng(0)
    photos = []
    for index in range(3):
        path = tmp_path / "in" / f"photo {index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
        photos.append(path)
    out = tmp_path / "out"
    names = [f"photo_{i}" for i in range(3)]
    explanations = cl.explain(clf, photos, METHODS, names=names)
    records = []
    for photo, explanation in zip(photos, explanations):
        files = explanation.save(out)
        record = _record(explanation, photo, files)
        records.append(record)
    records[0]["views"] = save_readable_maps(explanations[0], out)
    records[1]["notes"] = ["the map is <all zero>"]
    header = {"model": "tiny <vgg>", "methods": METHODS, "target": "pred", "layer": "features.5",
              "normalize": "image", "errors": [{"path": "bad.jpg", "error": "not an image"}]}
    return out, header, records


def test_explain_page_references_the_files_lazily(run) -> None:
    out, header, records = run
    page = write_explain_page(out, header, records)
    assert page == out / "index.html"
    parsed = _parse(page)
    assert parsed.csp == CSP and "default-src 'none'" in CSP and "script" not in CSP
    assert parsed.images, "no image on the page"
    for image in parsed.images:
        src = image["src"] or ""
        assert not src.startswith("data:"), "explain pages reference files, never embed"
        assert image.get("loading") == "lazy"
        assert (out / src).is_file(), src
    sources = [image["src"] for image in parsed.images]
    # every method's overlay file of every record is on the page
    for record in records[1:]:
        for method in METHODS:
            assert record["files"][method] in sources
    # record 0 has readable views of its pixel-level method: map + dimmed overlay
    views = records[0]["views"]
    assert set(views) == {"saliency"}
    assert views["saliency"]["map"] in sources and views["saliency"]["overlay"] in sources
    assert records[0]["files"]["saliency"] not in sources
    assert records[0]["files"]["gradcam"] in sources


def test_explain_page_shows_raw_scales_notes_errors_escaped(run) -> None:
    out, header, records = run
    text = write_explain_page(out, header, records).read_text(encoding="utf-8")
    for record in records:
        for method in METHODS:
            scale = record["scales"][method]
            if method in record["empty_maps"]:
                continue
            assert f"<span>{scale:.3g}</span>" in text, (method, scale)
    assert "99.5th percentile" in text          # pixel maps say where their scale comes from
    assert "the map is &lt;all zero&gt;" in text  # notes shown, escaped
    assert "bad.jpg: not an image" in text
    assert "<vgg>" not in text and "tiny &lt;vgg&gt;" in text
    assert "<b>dog</b>" not in text
    assert "layer features.5" in text                 # how the CAM was made
    assert "window=16, stride=8" in text              # occlusion's settings (its defaults)
    assert "<script" not in text


def test_explain_page_is_paged(run) -> None:
    out, header, records = run
    many = [dict(records[i % 3], name=f"n{i}") for i in range(5)]
    (out / "index-7.html").write_text("stale", encoding="utf-8")
    write_explain_page(out, header, many, per_page=2)
    pages = sorted(p.name for p in out.glob("index*.html"))
    assert pages == ["index-2.html", "index-3.html", "index.html"]
    first, middle, last = (_parse(out / n) for n in ("index.html", "index-2.html",
                                                      "index-3.html"))
    assert "index-2.html" in first.links
    assert {"index.html", "index-3.html"} <= set(middle.links)
    assert "index-2.html" in last.links and "index-3.html" not in last.links
    assert "n4" in (out / "index-3.html").read_text() and "n4" not in (
        out / "index.html").read_text()
    assert "bad.jpg" not in (out / "index-2.html").read_text()  # errors on page 1 only
    with pytest.raises(ConvlensError, match="per_page"):
        write_explain_page(out, header, many, per_page=0)


def test_file_names_cannot_leave_the_folder(run) -> None:
    out, header, records = run
    record = dict(records[1], files=dict(records[1]["files"]))
    record["files"]["gradcam"] = "../../etc/passwd"
    record["files"]["saliency"] = "javascript:alert(1)"
    record["files"]["occlusion"] = "/abs/x.png"
    text = write_explain_page(out, header, [record]).read_text(encoding="utf-8")
    assert "passwd" not in text and "javascript" not in text and "/abs/x.png" not in text
    assert text.count("no image") == 3
    assert relative_src("a b#c.png") == "a%20b%23c.png"
    assert relative_src("sub/x.png") == "sub/x.png"
    assert relative_src("C:\\x.png") is None and relative_src("") is None


def test_colorbar_ticks_are_raw_values() -> None:
    bar = colorbar(0.0123, target="cat")
    assert bar["ticks"] == ["0", "0.00615", "0.0123"] and not bar["empty"]
    assert "evidence for 'cat'" in bar["caption"]
    assert bar["gradient"].startswith("linear-gradient(to right, rgb(0,0,128) 0%")  # jet
    assert bar["gradient"].endswith("rgb(128,0,0) 100%)")
    signed = colorbar(2.0, sign="all", percentile=99.5, normalize="batch")
    assert signed["ticks"] == ["-2", "0", "2"]
    assert "99.5th percentile" in signed["caption"] and "shared" in signed["caption"]
    assert colorbar(0.0)["empty"] and colorbar(None)["ticks"] == []


def test_pixel_level_methods() -> None:
    assert is_pixel_level("saliency") and is_pixel_level("lrp")
    assert is_pixel_level("integrated_gradients") and is_pixel_level("guided_backprop")
    assert not is_pixel_level("occlusion") and not is_pixel_level("rise")
    assert not is_pixel_level("gradcam") and not is_pixel_level("no-such-method")


def test_dimmed_overlay_and_map_image() -> None:
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    heat = np.zeros((6, 8), dtype=np.float32)
    heat[2, 3], heat[4, 5] = 1.0, 0.25
    out = np.asarray(dimmed_overlay(photo, heat, dim=0.45)).astype(float)
    grey = np.asarray(photo, dtype=np.float32).mean(axis=2) * 0.45
    colours = figures.colorize(heat, PIXEL_CMAP).astype(float)
    # no heat: the greyed, dimmed photo; full heat: the colour alone; half way: a blend
    np.testing.assert_allclose(out[0, 0], [grey[0, 0]] * 3, atol=0.51)
    np.testing.assert_allclose(out[2, 3], colours[2, 3], atol=0.51)
    np.testing.assert_allclose(out[4, 5], 0.5 * grey[4, 5] + 0.5 * colours[4, 5], atol=0.51)
    seen = np.ones((6, 8), dtype=bool)
    seen[:, 0] = False
    assert np.array_equal(np.asarray(map_image(heat, seen=seen))[:, 1:], colours[:, 1:])
    assert (np.asarray(map_image(heat, seen=seen))[:, 0] == 128).all()
    with pytest.raises(InputShapeError, match="does not match"):
        dimmed_overlay(photo, heat.T)


def test_presentation_errors_are_convlens_errors() -> None:
    with pytest.raises(ConvlensError, match="colormap"):
        figures.colorize(np.zeros((2, 2)), "no-such-map")
    with pytest.raises(ConvlensError, match="does not match"):
        figures.overlay(Image.new("RGB", (4, 3)), np.zeros((4, 4)))
    with pytest.raises(ConvlensError, match="sign"):
        heatmap.apply_sign(torch.zeros(1, 2, 2), "up")
    with pytest.raises(ConvlensError, match="reduction"):
        reduce_channels(torch.zeros(1, 3, 2, 2), "mean")
    with pytest.raises(ConvlensError, match="normalisation"):
        heatmap.scale_of(torch.zeros(1, 2, 2), "dataset")
    with pytest.raises(ValueError):  # still catchable as before
        heatmap.apply_sign(torch.zeros(1, 2, 2), "up")


def test_template_is_one_file_autoescaped() -> None:
    from convlens.present.pages import render

    text = render({"title": "<t>", "samples": [], "header": [("k", "<v>")]})
    assert "&lt;t&gt;" in text and "&lt;v&gt;" in text
    assert re.search(r'http-equiv="Content-Security-Policy" content="default-src', text)


def test_how_lines_merge_the_run_options(run) -> None:
    out, header, records = run
    flat = write_explain_page(out, dict(header, options={"stride": 4}), records[1:2])
    assert "window=16, stride=4" in flat.read_text(encoding="utf-8")
    nested = write_explain_page(out, dict(header, options={"occlusion": {"window": 8}}),
                                records[1:2])
    assert "window=8, stride=8" in nested.read_text(encoding="utf-8")
