"""Tests for convlens.io: safe decoding, conversions, batch inputs, output names, samples.

Every input is built on the fly in ``tmp_path`` with Pillow or numpy, so each case says
exactly which bytes it feeds the loader and which pixels it expects back.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from convlens.errors import ConvlensError, ImageError
from convlens.io import (
    DEFAULT_MAX_PIXELS,
    SAMPLE_NAMES,
    InputProblem,
    expand_inputs,
    is_image_file,
    load_image,
    safe_output_name,
    sample_images,
    sample_paths,
)

WHITE = (255, 255, 255)
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


# ------------------------------------------------------------------------------ helpers


def _save(image: Image.Image, path: Path, **params: object) -> Path:
    image.save(path, **params)
    return path


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """An incompressible RGB image, so that cutting its file really cuts pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG with a valid IHDR claiming ``width`` x ``height`` and no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    return path


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in pixel) for pixel in np.asarray(image).reshape(-1, 3)]


def _error(source: object, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    return info.value


def _assert_one_line(error: ImageError, *needles: str) -> None:
    text = str(error)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


# ------------------------------------------------------------------- basic round trips


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    source = _noise(7, 5)
    path = _save(source, tmp_path / "noise.png")
    result = load_image(path)
    assert result.mode == "RGB"
    assert result.size == (7, 5)
    assert np.array_equal(np.asarray(result), np.asarray(source))


@pytest.mark.parametrize("kind", ["str", "path", "pathlike"])
def test_accepts_str_path_and_pathlike(tmp_path: Path, kind: str) -> None:
    path = _save(Image.new("RGB", (3, 2), BLUE), tmp_path / "blue.png")

    class Custom(os.PathLike):
        def __fspath__(self) -> str:
            return str(path)

    source = {"str": str(path), "path": path, "pathlike": Custom()}[kind]
    assert _pixels(load_image(source)) == [BLUE] * 6


def test_result_is_loaded_and_holds_no_open_file(tmp_path: Path) -> None:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to count open file descriptors")
    frames = [Image.new("P", (4, 4), i) for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])  # Pillow keeps these open
    before = len(os.listdir(fd_dir))
    results = [load_image(path) for _ in range(5)]
    assert len(os.listdir(fd_dir)) == before
    assert all(result.mode == "RGB" and result.size == (4, 4) for result in results)
    path.unlink()  # pixels were decoded already, the file is no longer needed
    assert results[0].getpixel((0, 0)) == results[1].getpixel((0, 0))


def test_pil_input_is_not_modified_and_not_returned(tmp_path: Path) -> None:
    source = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    result = load_image(source)
    assert result is not source
    assert source.mode == "RGBA" and source.getpixel((0, 0)) == (255, 0, 0, 0)
    assert _pixels(result) == [WHITE] * 4
    rgb = Image.new("RGB", (2, 2), GREEN)
    copy = load_image(rgb)
    assert copy is not rgb
    copy.putpixel((0, 0), BLUE)
    assert rgb.getpixel((0, 0)) == GREEN


# ------------------------------------------------------------------------ file errors


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    error = _error(path)
    assert isinstance(error, ConvlensError) and isinstance(error, ValueError)
    assert error.path == path
    assert "not found" in error.reason
    _assert_one_line(error, str(path), "not found", "JPEG, PNG")


def test_path_through_a_file_is_missing(tmp_path: Path) -> None:
    parent = _save(Image.new("RGB", (1, 1)), tmp_path / "a.png")
    _assert_one_line(_error(parent / "b.png"), "not found")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "photos.png"
    folder.mkdir()
    _assert_one_line(_error(folder), str(folder), "folder", "expand_inputs")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    _assert_one_line(_error(path), str(path), "empty (0 bytes)", "JPEG, PNG")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _assert_one_line(_error(path), str(path), "not a recognised image format", "JPEG, PNG")


def test_format_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    # Pillow can read PPM, but only the listed formats are let near user files.
    path = _save(Image.new("RGB", (2, 2), RED), tmp_path / "disguised.png", format="PPM")
    with Image.open(path) as check:
        assert check.format == "PPM"
    _assert_one_line(_error(path), "not a recognised image format")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_file_is_detected(tmp_path: Path, fmt: str, keep: float) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    full = _save(_noise(64, 64), tmp_path / f"full.{fmt.lower()}", format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: int(len(data) * keep)])
    error = _error(cut)
    _assert_one_line(error, str(cut), "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # we never switch it on


def test_truncated_jpeg_missing_only_its_tail(tmp_path: Path) -> None:
    full = _save(_noise(32, 32), tmp_path / "full.jpg", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:-20])
    _assert_one_line(_error(cut), "truncated")


def test_lazily_opened_truncated_pil_image(tmp_path: Path) -> None:
    full = _save(_noise(64, 64), tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:3000])
    with Image.open(cut) as lazy:  # header only: opening succeeds
        error = _error(lazy)
    assert error.path == cut
    _assert_one_line(error, "cannot read")


# ------------------------------------------------------------------- size limits


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_zero_side_png_header(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _png_header_only(tmp_path / "zero.png", *size)
    _assert_one_line(_error(path), str(path), f"zero side ({size[0]}x{size[1]}")


def test_zero_side_pil_and_array() -> None:
    _assert_one_line(_error(Image.new("RGB", (0, 5))), "zero side (0x5")
    _assert_one_line(_error(np.zeros((4, 0, 3), dtype=np.uint8)), "zero side (0x4")


def test_header_above_default_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    # 9000 x 9000 = 81 MP: under Pillow's own limit (89 MP) but over ours (64 MP). The file
    # has no pixel data, so reaching the decoder would give a truncation error instead.
    assert DEFAULT_MAX_PIXELS < 9000 * 9000 < Image.MAX_IMAGE_PIXELS
    path = _png_header_only(tmp_path / "big.png", 9000, 9000)
    _assert_one_line(_error(path), "9000x9000", "above the limit of 64,000,000 pixels",
                     "--max-pixels")


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_decompression_bomb_header_gets_the_one_cap_wording(tmp_path: Path, side: int) -> None:
    # 100 MP is above Pillow's warning limit (89 MP), 10 GP above its hard limit (179 MP):
    # both used to get Pillow's own wording and number; now one cap decides, worded once.
    filters_before = list(warnings.filters)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    path = _png_header_only(tmp_path / "bomb.png", side, side)
    message = _error(path)
    _assert_one_line(message, str(path), f"{side * side:,} pixels",
                     "above the limit of 64,000,000 pixels", "--max-pixels")
    assert "MAX_IMAGE_PIXELS" not in str(message)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # never changed, not even for a moment
    assert list(warnings.filters) == filters_before


def test_max_pixels_between_pillow_limits_is_honoured(tmp_path: Path) -> None:
    # 10000 x 10000 = 100 MP: Pillow only warns; with max_pixels above it our cap lets it
    # through to the decoder (which finds no pixel data in this header-only file).
    from convlens.io.images import pillow_pixel_ceiling

    path = _png_header_only(tmp_path / "big.png", 10_000, 10_000)
    _assert_one_line(_error(path, max_pixels=pillow_pixel_ceiling()), "truncated or corrupt")
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    _assert_one_line(_error(bomb, max_pixels=pillow_pixel_ceiling()),
                     f"above the limit of {pillow_pixel_ceiling():,} pixels")


def test_max_pixels_above_pillow_ceiling_is_refused() -> None:
    from convlens.io.images import pillow_pixel_ceiling

    _assert_one_line(_error(Image.new("RGB", (1, 1)), max_pixels=10**12),
                     f"at most {pillow_pixel_ceiling():,}")


def test_max_pixels_is_inclusive(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (20, 20), RED), tmp_path / "small.png")
    assert load_image(path, max_pixels=400).size == (20, 20)
    _assert_one_line(_error(path, max_pixels=399), "20x20 = 400 pixels", "limit of 399")
    _assert_one_line(_error(Image.new("RGB", (20, 20)), max_pixels=399), "limit of 399")
    _assert_one_line(_error(np.zeros((20, 20), dtype=np.uint8), max_pixels=399), "limit of 399")


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "64"])
def test_invalid_max_pixels(bad: object) -> None:
    _assert_one_line(_error(Image.new("RGB", (1, 1)), max_pixels=bad), "max_pixels")


@pytest.mark.parametrize("bad", [(255, 255), (0, 0, 256), (0, 0, -1), (0.5, 0, 0), "white", 3])
def test_invalid_background(bad: object) -> None:
    _assert_one_line(_error(Image.new("RGB", (1, 1)), background=bad), "background")


@pytest.mark.parametrize("bad", [b"\x89PNG", 42, None, [[0, 1]]])
def test_unsupported_source_type(bad: object) -> None:
    _assert_one_line(_error(bad), "unsupported input type", "PIL image", "numpy array")


# ------------------------------------------------------------------------ orientation


def _exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif


def test_exif_orientation_6_png_corner_pixels(tmp_path: Path) -> None:
    # Stored 4 wide x 2 high; orientation 6 means "rotate 90 degrees clockwise to display".
    stored = Image.new("RGB", (4, 2), (0, 0, 0))
    stored.putpixel((0, 0), RED)  # stored top-left  -> displayed top-right
    stored.putpixel((3, 0), GREEN)  # stored top-right -> displayed bottom-right
    stored.putpixel((0, 1), BLUE)  # stored bottom-left -> displayed top-left
    path = _save(stored, tmp_path / "rotated.png", exif=_exif_orientation(6))
    result = load_image(path)
    assert result.size == (2, 4)
    assert result.getpixel((1, 0)) == RED
    assert result.getpixel((1, 3)) == GREEN
    assert result.getpixel((0, 0)) == BLUE
    assert result.getpixel((0, 3)) == (0, 0, 0)


def test_exif_orientation_6_jpeg(tmp_path: Path) -> None:
    stored = Image.new("RGB", (64, 32), BLUE)
    stored.paste(RED, (0, 0, 32, 32))  # left half red -> top half once displayed
    path = _save(stored, tmp_path / "phone.jpg", exif=_exif_orientation(6), quality=95)
    result = load_image(path)
    assert result.size == (32, 64)
    top = np.asarray(result)[4:28, 4:28].mean(axis=(0, 1))
    bottom = np.asarray(result)[36:60, 4:28].mean(axis=(0, 1))
    assert np.allclose(top, RED, atol=6)
    assert np.allclose(bottom, BLUE, atol=6)


def test_exif_orientation_on_pil_input(tmp_path: Path) -> None:
    stored = Image.new("RGB", (3, 1), (0, 0, 0))
    stored.putpixel((0, 0), RED)
    path = _save(stored, tmp_path / "o8.png", exif=_exif_orientation(8))  # 90 deg CCW
    with Image.open(path) as opened:
        result = load_image(opened)
    assert result.size == (1, 3)
    assert result.getpixel((0, 2)) == RED  # stored top-left -> displayed bottom-left


# ------------------------------------------------------------------------ transparency


def test_rgba_alpha_zero_hides_colour(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 3), (255, 0, 0, 0))  # red, but fully transparent
    path = _save(rgba, tmp_path / "ghost.png")
    assert _pixels(load_image(path)) == [WHITE] * 9
    assert _pixels(load_image(path, background=(0, 0, 255))) == [BLUE] * 9


def test_rgba_partial_alpha_blends(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (1, 1), (255, 0, 0, 128))
    (r, g, b) = load_image(rgba).getpixel((0, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    opaque = Image.new("RGBA", (1, 1), (10, 20, 30, 255))
    assert load_image(opaque).getpixel((0, 0)) == (10, 20, 30)


def test_la_image(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))  # black, transparent
    la.putpixel((1, 0), (0, 255))  # black, opaque
    path = _save(la, tmp_path / "la.png")
    assert _pixels(load_image(path)) == [WHITE, (0, 0, 0)]
    assert _pixels(load_image(path, background=(9, 8, 7))) == [(9, 8, 7), (0, 0, 0)]


def test_palette_with_transparency_png(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)  # red index, made transparent below
    pal.putpixel((1, 0), 1)  # green
    path = _save(pal, tmp_path / "pal.png", transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    assert _pixels(load_image(path)) == [WHITE, GREEN]


def test_palette_with_transparency_gif(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    path = _save(pal, tmp_path / "pal.gif", transparency=0)
    assert _pixels(load_image(path, background=(0, 255, 0))) == [GREEN, BLUE]


def test_rgb_with_colour_key_transparency(tmp_path: Path) -> None:
    rgb = Image.new("RGB", (2, 1), RED)
    rgb.putpixel((1, 0), BLUE)
    path = _save(rgb, tmp_path / "key.png", transparency=RED)
    assert _pixels(load_image(path)) == [WHITE, BLUE]


# -------------------------------------------------------------------- mode conversions


def test_palette_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([12, 34, 56, 200, 100, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    path = _save(pal, tmp_path / "pal.png")
    assert _pixels(load_image(path)) == [(12, 34, 56), (200, 100, 0)]


def test_cmyk(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    cmyk.putpixel((1, 0), (0, 255, 255, 0))  # magenta + yellow: red
    cmyk.putpixel((2, 0), (0, 0, 0, 255))  # key: black
    path = _save(cmyk, tmp_path / "cmyk.tif")
    assert _pixels(load_image(path)) == [WHITE, RED, (0, 0, 0)]


def test_one_bit(tmp_path: Path) -> None:
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    path = _save(bits, tmp_path / "bits.png")
    assert _pixels(load_image(path)) == [(0, 0, 0), WHITE]


def test_grey_l(tmp_path: Path) -> None:
    grey = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    path = _save(grey, tmp_path / "grey.png")
    assert _pixels(load_image(path)) == [(0, 0, 0), (77, 77, 77), WHITE]


SIXTEEN_BIT = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = [0, 1, 128, 255]


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_sixteen_bit_grey_file_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    path = _save(Image.fromarray(SIXTEEN_BIT), tmp_path / f"deep.{fmt}")
    with Image.open(path) as check:
        assert check.mode == "I;16"
    assert _pixels(load_image(path)) == [(v, v, v) for v in SIXTEEN_BIT_AS_8]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_modes_in_memory(mode: str) -> None:
    base = Image.fromarray(SIXTEEN_BIT)
    image = base if mode == "I;16" else base.convert("I").convert(mode)
    assert image.mode == mode
    assert _pixels(load_image(image)) == [(v, v, v) for v in SIXTEEN_BIT_AS_8]


def test_mode_i_outside_16_bits_is_stretched() -> None:
    image = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert image.mode == "I"
    assert [p[0] for p in _pixels(load_image(image))] == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 100.0, 255.0], [0, 100, 255])],
)
def test_mode_f(values: list[float], expected: list[int]) -> None:
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    assert [p[0] for p in _pixels(load_image(image))] == expected


def test_mode_f_nan_is_refused() -> None:
    image = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32))
    _assert_one_line(_error(image), "NaN")


# ------------------------------------------------------------------------ numpy inputs


def test_array_uint8_shapes() -> None:
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    assert _pixels(load_image(grey)) == [(0, 0, 0), (100,) * 3, (200,) * 3, WHITE]
    assert _pixels(load_image(grey[:, :, None])) == _pixels(load_image(grey))
    rgb = np.zeros((1, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    rgb[0, 1] = (250, 251, 252)
    assert _pixels(load_image(rgb)) == [(1, 2, 3), (250, 251, 252)]


def test_array_rgba_is_composited() -> None:
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255]]], dtype=np.uint8)
    assert _pixels(load_image(rgba)) == [WHITE, BLUE]
    assert _pixels(load_image(rgba, background=(0, 255, 0))) == [GREEN, BLUE]


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_array_uint16(dtype: str) -> None:
    values = SIXTEEN_BIT.astype(dtype)
    assert [p[0] for p in _pixels(load_image(values))] == SIXTEEN_BIT_AS_8
    rgb = np.stack([values, values[:, ::-1], values], axis=-1)
    assert _pixels(load_image(rgb))[0] == (0, 255, 0)


def test_array_bool() -> None:
    mask = np.array([[True, False]])
    assert _pixels(load_image(mask)) == [WHITE, (0, 0, 0)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_array_float_unit_range(dtype: type) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=dtype)
    assert [p[0] for p in _pixels(load_image(values))] == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ([0.0, 1.5], "got 0 to 1.5"),
        ([-0.1, 1.0], "got -0.1 to 1"),
        ([0.0, np.nan], "NaN"),
        ([0.0, np.inf], "infinite"),
    ],
)
def test_array_float_out_of_range(values: list[float], needle: str) -> None:
    _assert_one_line(_error(np.array([values], dtype=np.float32)), needle, "[0, 1]")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.int8, np.complex64, object])
def test_array_unsupported_dtype(dtype: type) -> None:
    error = _error(np.zeros((2, 2), dtype=dtype))
    assert error.path is None
    _assert_one_line(error, "unsupported array dtype", "uint8, uint16, bool")


@pytest.mark.parametrize(
    ("shape", "hint"),
    [((3, 8, 8), "channels-first"), ((1, 8, 8, 3), "batch"), ((8, 8, 2), ""), ((8,), "")],
)
def test_array_unsupported_shape(shape: tuple[int, ...], hint: str) -> None:
    error = _error(np.zeros(shape, dtype=np.uint8))
    _assert_one_line(error, f"unsupported array shape {shape}", "HxW, HxWx1, HxWx3", hint)


def test_array_non_contiguous_view() -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[:, 0] = RED
    flipped = rgb[:, ::-1]
    assert not flipped.flags.c_contiguous
    assert load_image(flipped).getpixel((2, 0)) == RED


# --------------------------------------------------------------------- is_image_file


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("a.JPEG", True),
        ("dir/b.png", True),
        ("c.Bmp", True),
        ("d.gif", True),
        ("e.tif", True),
        ("f.TIFF", True),
        ("g.webp", True),
        ("h.txt", False),
        ("png", False),
        (".png", False),
        ("i.png.txt", False),
        ("j.heic", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


# ---------------------------------------------------------------------- expand_inputs


def _tree(root: Path) -> Path:
    for rel in [
        "a.png",
        "b.JPG",
        "sub/c.jpeg",
        "sub/deeper/e.webp",
        ".hidden.png",
        ".cache/d.png",
        "sub/.x.png",
        "notes.txt",
        "sub/readme.md",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def test_expand_folder_recursive(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    images, problems = expand_inputs([root])
    assert images == [
        root / "a.png",
        root / "b.JPG",
        root / "sub/c.jpeg",
        root / "sub/deeper/e.webp",
    ]
    assert problems == []


def test_expand_folder_not_recursive(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    images, problems = expand_inputs([str(root)], recursive=False)
    assert images == [root / "a.png", root / "b.JPG"]
    assert problems == []


def test_expand_missing_path_is_a_problem_not_an_error(tmp_path: Path) -> None:
    good = _save(Image.new("RGB", (1, 1)), tmp_path / "good.png")
    missing = tmp_path / "missing.png"
    images, problems = expand_inputs([missing, good])
    assert images == [good]
    assert problems == [InputProblem(missing, "not found")]
    assert str(problems[0]) == f"{missing}: not found"


def test_expand_empty_folder_and_folder_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    (texts / ".b.png").write_bytes(b"x")
    images, problems = expand_inputs([empty, texts])
    assert images == []
    assert [p.path for p in problems] == [empty, texts]
    assert all(p.reason.startswith("no images found") for p in problems)


def test_expand_not_recursive_mentions_sub_folders(tmp_path: Path) -> None:
    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "top" / "sub" / "a.png").write_bytes(b"x")
    images, problems = expand_inputs([tmp_path / "top"], recursive=False)
    assert images == []
    assert "directly in folder" in problems[0].reason


def test_expand_explicit_files(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    images, problems = expand_inputs([root / ".hidden.png", root / "notes.txt", root / "a.png"])
    assert images == [root / ".hidden.png", root / "a.png"]  # named explicitly: kept
    assert len(problems) == 1 and problems[0].path == root / "notes.txt"
    assert "not an image file" in problems[0].reason and ".png" in problems[0].reason


def test_expand_deduplicates(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    images, _ = expand_inputs([root / "a.png", root, str(root / "a.png")])
    assert images.count(root / "a.png") == 1
    assert len(images) == 4


def test_expand_single_string_is_one_path(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    images, problems = expand_inputs(str(root))  # type: ignore[arg-type]
    assert len(images) == 4 and problems == []


def test_expand_does_not_follow_symlink_loops(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    try:
        (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not available")
    images, problems = expand_inputs([root])
    assert len(images) == 4 and problems == []


def test_expand_empty_list() -> None:
    assert expand_inputs([]) == ([], [])


def test_input_problem_is_frozen(tmp_path: Path) -> None:
    problem = InputProblem(tmp_path, "x")
    with pytest.raises(AttributeError):
        problem.reason = "y"  # type: ignore[misc]


# ------------------------------------------------------------------- safe_output_name

SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("photos/cat.jpg", "cat"),
        ("../../etc/passwd", "passwd"),
        ("..", "image"),
        (".", "image"),
        (".hidden.png", "hidden"),
        ("Café au lait.JPG", "Café_au_lait"),
        ("Cafe\u0301.png", "Café"),  # decomposed accent -> composed
        ("猫.png", "猫"),
        ("猫 cat.png", "猫_cat"),
        ("照片 (2).jpg", "照片_2_"),
        ("a\u202egnp.exe", "a_gnp"),  # right-to-left override dropped
        ("😀.png", "image"),
        ("a\\b\\..\\evil.png", "evil"),
        ("my..photo.png", "my.photo"),
        ("-rf.png", "rf"),
        ("CON.png", "_CON"),
        ("archive.tar.gz", "archive.tar"),
        ("x/", "x"),
        ("", "image"),
        ("a b\tc\n.png", "a_b_c_"),
        ("a  b.png", "a_b"),
    ],
)
def test_safe_output_name_sanitizes(raw: str, expected: str) -> None:
    assert safe_output_name(Path(raw) if raw else raw, set()) == expected


def test_safe_output_name_stays_inside_output_dir(tmp_path: Path) -> None:
    used: set[str] = set()
    hostile = [
        "../../etc/passwd",
        "..",
        "/abs/path/x.png",
        "a/../../b.png",
        "..\\..\\w.png",
        "...",
        "~/.ssh/id_rsa",
        "nul.png",
        "x" * 500 + ".png",
    ]
    for raw in hostile:
        name = safe_output_name(Path(raw), used)
        assert SAFE.match(name), name
        assert name not in {".", ".."} and ".." not in name and len(name) <= 80
        target = (tmp_path / f"{name}.png").resolve()
        assert target.parent == tmp_path.resolve()


def test_safe_output_name_deduplicates(tmp_path: Path) -> None:
    used: set[str] = set()
    names = [
        safe_output_name(Path(p), used)
        for p in ["a/photo.jpg", "b/photo.png", "c/Photo.JPG", "photo-2.png", "d/photo.webp"]
    ]
    assert names == ["photo", "photo-2", "Photo-3", "photo-2-2", "photo-4"]
    assert used == set(names)


def test_safe_output_name_respects_existing_used() -> None:
    used = {"cat", "cat-2"}
    assert safe_output_name("x/cat.png", used) == "cat-3"
    assert "cat-3" in used


def test_safe_output_name_length_cap_includes_suffix() -> None:
    used: set[str] = set()
    first = safe_output_name("y" * 300 + ".png", used)
    second = safe_output_name("y" * 300 + ".jpg", used)
    assert first == "y" * 80
    assert second == "y" * 78 + "-2"


# ------------------------------------------------------------------------------ samples


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to reach the network fail loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_sample_images_are_bundled_colour_photos() -> None:
    from skimage import data

    images = sample_images()
    assert tuple(images) == SAMPLE_NAMES
    assert {"chelsea", "coffee"} <= set(images)
    assert images["chelsea"].size == (451, 300)
    assert images["coffee"].size == (600, 400)
    assert np.array_equal(np.asarray(images["chelsea"]), data.chelsea())
    for name, image in images.items():
        pixels = np.asarray(image).astype(int)
        assert image.mode == "RGB", name
        # colour photos: the channels genuinely differ somewhere
        assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 5, name
    assert sample_images()["coffee"] is not images["coffee"]  # fresh copies each call


@pytest.mark.usefixtures("no_network")
def test_sample_paths_writes_loadable_pngs(tmp_path: Path) -> None:
    target = tmp_path / "new" / "demo"
    paths = sample_paths(target)
    assert paths == [target / f"{name}.png" for name in SAMPLE_NAMES]
    images = sample_images()
    for path in paths:
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(images[path.stem]))
    assert expand_inputs([target]) == (sorted(paths), [])
