"""The demo (jobs/demo.py): what the default shows, a self-contained page, how it was made."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.attribution.core import FAMILIES, get_method
from convlens.errors import ConvlensError
from convlens.jobs import demo as demo_job
from convlens.visualization import gallery


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.csp: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.sources.append(values.get("src") or "")
        if tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content")


def test_default_methods_cover_every_family_with_light_settings() -> None:
    families = {get_method(name).family for name in demo_job.DEFAULT_METHODS}
    assert families == set(FAMILIES)
    for name, options in {**demo_job.LIGHT_OPTIONS, **demo_job.FULL_OPTIONS}.items():
        spec = get_method(name)
        assert set(options) <= set(spec.options) | {"layer"}, name
    # the light settings are lighter than the library's defaults
    for name, options in demo_job.LIGHT_OPTIONS.items():
        for key in ("steps", "samples", "masks"):
            if key in options:
                assert options[key] < get_method(name).options[key]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> cl.Classifier:
    """The demo with a tiny model in place of the bundled one (fast)."""
    module = seeded(TinyVGG(classes=4), dtype=torch.float32)
    clf = cl.Classifier(module, labels=["tabby", "espresso", "cup", "rocket"], input_size=32,
                        device="cpu")
    monkeypatch.setattr("convlens.models.loading.load_model", lambda device="auto": clf)
    return clf


def test_demo_page_is_self_contained_and_says_how(tiny, tmp_path: Path) -> None:
    methods = ["gradcam", "saliency", "rise"]
    page = demo_job.build_demo(tmp_path, methods=methods)
    text = page.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(text)
    assert parsed.csp and "default-src 'none'" in parsed.csp
    assert parsed.sources and all(s.startswith("data:image/") for s in parsed.sources)
    # 2 photos: input + gradcam + saliency (map and dimmed overlay) + rise = 5 each;
    # then the 12 precomputed feature images
    assert len(parsed.sources) == 2 * 5 + 12
    assert text.count("<section class=\"sample\">") == 2
    assert "chelsea" in text and "coffee" in text and "rocket:" not in text
    assert "masks=150" in text                      # rise at the demo's light setting
    assert text.count("s CPU per photo") == 2 * len(methods)
    assert "left: the map alone" in text            # the pixel-level method shown readably
    assert text.count("256 steps, 128 px") == 12    # every feature image says how it was made
    assert "objective" in text and "precomputed by scripts/make_demo_features.py" in text
    assert (tmp_path / "chelsea.saliency.png").is_file()


def test_demo_refuses_unknown_names(tiny, tmp_path: Path) -> None:
    with pytest.raises(ConvlensError, match="no-such"):
        demo_job.build_demo(tmp_path, methods=["no-such"])
    with pytest.raises(ConvlensError, match="unknown sample"):
        demo_job.build_demo(tmp_path, methods=["gradcam"], samples=["astronaut"])


def test_feature_how_says_when_stopped_early() -> None:
    how = {"objective": "blocks.2:0", "steps_requested": 256, "steps_reached": 40,
           "settings": {"size": 128, "seed": 0, "param": "fft", "transforms": "standard",
                        "lr": None, "optimizer": "Adam"},
           "objective_half": 1.5, "objective_final": 2.25, "seconds": 3.0}
    text = demo_job.feature_how(how)
    assert "40 of 256 steps (stopped early)" in text
    assert "objective 1.5 at step 20, 2.25 at the end" in text and "seed 0" in text


def test_committed_features_match_the_script_settings() -> None:
    folder = Path(gallery.__file__).parents[1] / "data" / "demo_features"
    index = json.loads((folder / gallery.FEATURES_INDEX).read_text(encoding="utf-8"))
    assert index["settings"] == gallery.PRECOMPUTED_SETTINGS
    assert [g["title"] for g in index["groups"]] == [t for t, _ in gallery.PRECOMPUTED]
    records = gallery.precomputed_gallery()
    for (_, objectives), record in zip(gallery.PRECOMPUTED, records):
        assert [item["how"]["objective"] for item in record["items"]] == objectives
        for item in record["items"]:
            how = item["how"]
            assert how["steps_reached"] == how["steps_requested"] == 256  # never cut short
            assert how["settings"]["size"] == 128 and how["settings"]["seed"] == 0
            assert how["objective_final"] > 0.9 * how["objective_half"] > 0  # settled
            from PIL import Image

            with Image.open(item["path"]) as image:
                assert image.size == (128, 128)
            assert Path(item["path"]).stat().st_size < 80_000


def test_precomputed_gallery_reports_a_broken_installation(tmp_path: Path) -> None:
    with pytest.raises(ConvlensError, match="scripts/make_demo_features.py"):
        gallery.precomputed_gallery(tmp_path)
    (tmp_path / gallery.FEATURES_INDEX).write_text(json.dumps({"groups": [{"title": "t", "items": [
        {"objective": "blocks.2:0", "caption": "c", "file": "gone.png"}]}]}))
    with pytest.raises(ConvlensError, match="missing"):
        gallery.precomputed_gallery(tmp_path)


def test_cli_help_states_the_cost_of_full() -> None:
    from typer.testing import CliRunner

    from convlens.cli import app

    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--full" in result.output and "CPU minutes" in result.output
