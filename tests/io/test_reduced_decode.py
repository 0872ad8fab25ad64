"""JPEGs decoded at reduced size (libjpeg's DCT scaling) for the network's input.

A 1600x1200 camera-like JPEG and a 32-pixel input: the resize step needs 48x36, twice that
is 96x72, so libjpeg may scale by 1/8 (200x150). The tolerance below was measured on these
photos: the largest difference from the full decode's input is 0.035 in normalised units
(~2/255 of a pixel), the mean 0.0036; for the EXIF-turned copy the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_support import FACTORY, LABELS
from PIL import Image, JpegImagePlugin
from typer.testing import CliRunner

from convlens.errors import ModelLoadError
from convlens.io.images import load_image, load_reduced
from convlens.io.samples import sample_images
from convlens.preprocessing import Preprocessing

PRE = Preprocessing(input_size=32)
FULL = Preprocessing(input_size=32, decode_margin=None)
MAX_DIFFERENCE = 0.07  # normalised units; measured 0.035 (module docstring)
MEAN_DIFFERENCE = 0.01  # measured 0.0036


def _camera_photo() -> Image.Image:
    """The bundled cat upscaled to 1600x1200: a smooth photo, like a camera's."""
    return sample_images()["chelsea"].resize((1600, 1200), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    photo = _camera_photo()
    paths = {"jpeg": folder / "cat.jpg", "png": folder / "cat.png",
             "turned": folder / "turned.jpg", "small": folder / "small.jpg"}
    photo.save(paths["jpeg"], quality=90)
    photo.save(paths["png"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    photo.transpose(Image.Transpose.ROTATE_90).save(paths["turned"], quality=90,
                                                   exif=exif.tobytes())
    photo.resize((80, 60)).save(paths["small"], quality=90)
    return paths


@pytest.fixture
def drafts(monkeypatch) -> list[tuple[int, int]]:
    """The sizes every JPEG draft was asked for."""
    asked: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        asked.append(tuple(size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return asked


def _close(reduced: torch.Tensor, full: torch.Tensor) -> None:
    difference = (reduced - full).abs()
    assert float(difference.max()) < MAX_DIFFERENCE
    assert float(difference.mean()) < MEAN_DIFFERENCE


def test_a_large_jpeg_is_decoded_at_reduced_size_close_to_the_full_decode(photos, drafts):
    assert PRE.decode_size(1600, 1200) == (96, 72)  # 2x the resize step's 48x36
    image, full_size = load_reduced(photos["jpeg"], PRE.decode_size)
    assert drafts == [(96, 72)]
    assert image.size == (200, 150) and full_size == (1600, 1200)  # libjpeg's 1/8
    reduced, geometry, photo = PRE.load_file(photos["jpeg"])
    full, full_geometry, _ = FULL.load_file(photos["jpeg"])
    assert photo is None
    assert geometry == full_geometry  # the resize is computed from the full size
    assert not torch.equal(reduced, full)
    _close(reduced, full)


def test_keep_photo_returns_the_full_size_photo(photos):
    _, _, photo = PRE.load_file(photos["jpeg"], keep_photo=True)
    assert photo.size == (1600, 1200)
    assert photo.tobytes() == load_image(photos["jpeg"]).tobytes()


def test_exif_orientation_is_honoured_with_the_reduced_decode(photos, drafts):
    image, full_size = load_reduced(photos["turned"], PRE.decode_size)
    assert drafts == [(72, 96)]  # asked in the stored (sideways) orientation
    assert image.size == (200, 150) and full_size == (1600, 1200)
    turned, geometry, _ = PRE.load_file(photos["turned"])
    upright, upright_geometry, _ = PRE.load_file(photos["jpeg"])
    assert geometry == upright_geometry
    _close(turned, upright)  # the same picture, upright, not a sideways one
    _close(turned, FULL.load_file(photos["turned"])[0])


def test_png_and_small_jpegs_are_decoded_at_full_size(photos, drafts):
    for name in ("png", "small"):
        image, full_size = load_reduced(photos[name], PRE.decode_size)
        assert image.size == full_size
        assert torch.equal(PRE.load_file(photos[name])[0], FULL.load_file(photos[name])[0])
    assert drafts == []  # a PNG is never drafted; 80x60 is under twice the 96x72 asked


def test_the_decode_margin_is_part_of_the_preprocessing_identity():
    assert repr(PRE) != repr(FULL)  # audit stores fingerprint repr, explain jobs asdict
    assert Preprocessing(input_size=32, decode_margin=4).decode_size(1600, 1200) == (192, 144)
    with pytest.raises(ModelLoadError, match="decode_margin must be an int >= 1"):
        Preprocessing(decode_margin=0)


def test_explain_and_audit_feed_the_network_the_same_reduced_decode(photos, tmp_path,
                                                                    monkeypatch):
    """Through the CLI: both commands attribute the very same input tensor, the reduced one."""
    import convlens.auditing.passes as passes
    import convlens.explanations as explanations
    from convlens.cli.app import app

    seen: dict[str, list[torch.Tensor]] = {"explain": [], "audit": []}

    def spy(module, command):
        original = module.attribute

        def attribute(model, x, *args, **kwargs):
            seen[command].append(x.detach().cpu().clone())
            return original(model, x, *args, **kwargs)
        monkeypatch.setattr(module, "attribute", attribute)

    spy(explanations, "explain")
    spy(passes, "audit")
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "cat.jpg").write_bytes(photos["jpeg"].read_bytes())
    model = ["--model", FACTORY, "--labels", str(LABELS), "--input-size", "32",
             "--device", "cpu"]
    for command, options in (("explain", ["--method", "gradcam", "--no-grid"]),
                             ("audit", [])):
        result = CliRunner().invoke(app, [command, str(tmp_path / "data"), *model, *options,
                                          "--out", str(tmp_path / command)],
                                    catch_exceptions=False)
        assert result.exit_code in (0, 1), result.output
    explained, audited = seen["explain"][0], seen["audit"][0]
    assert torch.equal(explained, audited)
    assert torch.equal(explained[0], PRE.load_file(photos["jpeg"])[0])
    assert not torch.equal(explained[0], FULL.load_file(photos["jpeg"])[0])
    with Image.open(tmp_path / "explain" / "cat.gradcam.png") as overlay:
        assert overlay.size == (1600, 1200)  # drawn on the full-size photo, not the reduced one
