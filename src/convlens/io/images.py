"""Safe image decoding: every input a user can hand convlens becomes one RGB, 8-bit image.

Classifiers expect 8-bit RGB, but real inputs are messy: 16-bit scans, transparent PNGs,
CMYK JPEGs, phone photos stored sideways with an EXIF orientation tag, half-downloaded
files and the occasional decompression bomb. :func:`load_image` turns each of them into
the image a person would see in a viewer, or raises :class:`~convlens.errors.ImageError`
with a one-line message naming the file, the reason and what is accepted.

The module never changes Pillow's process-wide settings: ``Image.MAX_IMAGE_PIXELS`` is
left alone (our own pixel cap is checked from the header before any pixel is decoded)
and ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set, so a truncated file fails loudly
instead of being padded with grey.

Batch helpers live here too: :func:`expand_inputs` turns files and folders into a sorted
list of image files through the one folder walker, :mod:`convlens.io.walk` (reporting bad
inputs instead of raising, so one typo does not stop a batch); :data:`IMAGE_EXTENSIONS`,
:func:`is_image_file` and :class:`InputProblem` live there and are re-exported here; and
:func:`safe_output_name` derives output file names that cannot escape the output
directory.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeAlias

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from convlens.errors import ImageError
from convlens.io.walk import IMAGE_EXTENSIONS, InputProblem, find_images, is_image_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "InputProblem",
    "expand_inputs",
    "is_image_file",
    "load_image",
    "load_reduced",
    "pillow_pixel_ceiling",
    "safe_output_name",
    "too_many_pixels",
]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image (width x height) :func:`load_image` decodes unless told otherwise."""

ImageSource: TypeAlias = str | os.PathLike[str] | Image.Image | np.ndarray
"""Anything :func:`load_image` accepts."""

DecodeSize: TypeAlias = Callable[[int, int], "tuple[int, int] | None"]
"""``(width, height)`` of a photo as displayed -> the smallest ``(width, height)`` a reduced
decode may give (None: decode at full size); see :func:`load_reduced`."""

# Pillow decoders we let near user files. Restricting the list keeps exotic plugins (EPS
# runs Ghostscript, for instance) out of reach of a file that merely lies about its name.
# "JPEG" also covers the multi-picture (MPO) JPEGs many cameras and phones write.
_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
_ACCEPTED_FILES = "JPEG, PNG, BMP, GIF, TIFF or WebP"
_ACCEPTED_INPUTS = f"a path to a {_ACCEPTED_FILES} file, a PIL image or a numpy array"
_ACCEPTED_ARRAYS = "HxW, HxWx1, HxWx3 or HxWx4 (channels last)"
_ACCEPTED_DTYPES = "uint8, uint16, bool, or float with values in [0, 1]"

# Errors Pillow raises for damaged files, besides the OSError of a truncated one.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_KEYED_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- load_image


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = (255, 255, 255),
) -> Image.Image:
    """Decode an image into the RGB, 8-bit picture a person would see in a viewer.

    Paths are opened with a restricted set of decoders, checked against ``max_pixels``
    from the header alone (before any pixel is decoded), decoded completely so that
    truncation surfaces here rather than later inside a model, and closed. Then, for every
    kind of source:

    * the EXIF orientation is applied, so sideways phone photos come out upright;
    * transparency (RGBA, LA, palette or colour-key transparency) is composited onto
      ``background``, so pixels hidden under alpha 0 never reach the classifier;
    * 16-bit greyscale is scaled by its true range (``I;16``: divided by 257), not clipped;
    * palette, CMYK, 1-bit and the other Pillow modes are converted to RGB.

    Multi-frame files (animated GIF, multi-page TIFF) give their first frame.

    Args:
        source: A path (``str`` or ``os.PathLike``), a PIL image (not modified), or a numpy
            array shaped HxW, HxWx1, HxWx3 or HxWx4 with dtype uint8, uint16, bool, or
            float holding values in [0, 1].
        max_pixels: Refuse images with more than this many pixels (width x height), to
            keep a decompression bomb from exhausting memory; default 64,000,000 (CLI:
            ``--max-pixels``). It is the only cap: Pillow's softer limit
            (``PIL.Image.MAX_IMAGE_PIXELS``) is not applied on top, and values above
            :func:`pillow_pixel_ceiling` (where Pillow refuses outright) are rejected.
        background: RGB colour, three ints in 0-255, that transparent pixels are
            composited onto.

    Returns:
        A new, fully loaded ``RGB`` image that holds no open file.

    Raises:
        ImageError: The source is missing, a folder, empty, not an image, truncated or
            corrupt, has a zero side, exceeds the pixel cap, or is an array of an
            unsupported shape or dtype; also for invalid ``max_pixels`` or ``background``.
    """
    limit = _check_max_pixels(max_pixels)
    fill = _check_background(background)
    if isinstance(source, Image.Image):
        return _from_pil(source, limit, fill)
    if isinstance(source, np.ndarray):
        return _from_array(source, limit, fill)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(os.fsdecode(os.fspath(source))), limit, fill)[0]
    raise ImageError(
        None, f"unsupported input type {type(source).__name__}; expected {_ACCEPTED_INPUTS}"
    )


def load_reduced(
    path: str | os.PathLike[str],
    decode_size: DecodeSize,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = (255, 255, 255),
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image` of a file, decoded at reduced size where the file allows it cheaply.

    A JPEG is decoded with libjpeg's DCT scaling (Pillow's ``Image.draft``: 1/2, 1/4 or
    1/8 of each side, chosen by libjpeg's rule, so never below what is asked) when
    ``decode_size`` asks for at most half the photo on both axes; skipping most of the
    inverse DCT and the pixels makes a 12-megapixel photo several times cheaper to decode
    (BENCHMARKS.md, "Reduced-size JPEG decoding"). Other formats, and JPEGs Pillow cannot
    draft (several scans in one tile list), are decoded at full size. The EXIF orientation
    is honoured as by :func:`load_image`: the request is turned into the stored orientation
    before drafting, and the reduced image is rotated like the full one would be.

    Args:
        path: An image file.
        decode_size: The caller's rule, called with the photo's displayed ``(width,
            height)`` (from the header, orientation applied): the smallest ``(width,
            height)`` it may be decoded at, or None for full size. A model's
            preprocessing gives one: ``Preprocessing.decode_size``
            (:mod:`convlens.preprocessing`).
        max_pixels, background: As for :func:`load_image`; the cap applies to the full
            size.

    Returns:
        ``(image, full_size)``: the RGB image (reduced or not) and the ``(width, height)``
        the photo has at full size, as displayed.

    Raises:
        ImageError: As :func:`load_image`.
    """
    limit = _check_max_pixels(max_pixels)
    fill = _check_background(background)
    return _from_path(Path(os.fsdecode(os.fspath(path))), limit, fill, decode_size)


def pillow_pixel_ceiling() -> int | None:
    """The most pixels Pillow ever decodes: twice ``PIL.Image.MAX_IMAGE_PIXELS`` (None: no cap).

    Above it Pillow raises ``DecompressionBombError`` whatever we allow, so ``max_pixels``
    may not exceed it; between ``MAX_IMAGE_PIXELS`` and the ceiling Pillow only warns, and
    that warning is silenced here so that one cap (``max_pixels``) decides, with one wording.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _check_max_pixels(max_pixels: int) -> int:
    """Validate the pixel cap: a positive int (bools are rejected as a likely mistake)."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise ImageError(None, f"max_pixels must be a positive int, got {max_pixels!r}")
    if max_pixels < 1:
        raise ImageError(None, f"max_pixels must be a positive int, got {max_pixels}")
    ceiling = pillow_pixel_ceiling()
    if ceiling is not None and max_pixels > ceiling:
        raise ImageError(
            None,
            f"max_pixels can be at most {ceiling:,} (Pillow refuses larger images: twice "
            f"PIL.Image.MAX_IMAGE_PIXELS), got {int(max_pixels):,}",
        )
    return int(max_pixels)


def too_many_pixels(pixels: int, max_pixels: int, size: tuple[int, int] | None = None) -> str:
    """The one wording of the pixel cap, whoever noticed it (our header check or Pillow's)."""
    shape = f"{size[0]}x{size[1]} = " if size is not None else ""
    return (
        f"image is {shape}{pixels:,} pixels, above the limit of {max_pixels:,} pixels "
        "(decompression-bomb guard); downscale it, or raise the limit with --max-pixels N "
        "(API: max_pixels=N)"
    )


def _check_background(background: Sequence[int]) -> tuple[int, int, int]:
    """Validate the background colour: three ints in 0-255."""
    try:
        values = tuple(background)
    except TypeError:
        values = ()
    valid = len(values) == 3 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    )
    if not valid:
        raise ImageError(
            None, f"background must be three ints in 0-255 (an RGB colour), got {background!r}"
        )
    return (int(values[0]), int(values[1]), int(values[2]))


def _check_size(size: tuple[int, int], max_pixels: int, path: Path | None) -> None:
    """Reject images with a zero side or more pixels than allowed, before decoding them."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(
            path, f"image has a zero side ({width}x{height} pixels); expected an image at least 1x1"
        )
    if width * height > max_pixels:
        raise ImageError(path, too_many_pixels(width * height, max_pixels, (width, height)))


def _one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line, for embedding in our messages."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


# ------------------------------------------------------------------------------ sources


def _from_path(path: Path, max_pixels: int, background: tuple[int, int, int],
               decode_size: DecodeSize | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Check that ``path`` is a non-empty regular file, then decode it (see load_reduced)."""
    _check_regular_file(path)
    with _open_file(path) as handle:
        return _decode_file(handle, path, max_pixels, background, decode_size)


def _check_regular_file(path: Path) -> None:
    """Raise a specific ImageError for missing paths, folders, special and empty files."""
    expected = f"expected an image file ({_ACCEPTED_FILES})"
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(path, f"file not found; {expected}") from None
    except (OSError, ValueError) as error:  # ValueError: embedded NUL byte in the path
        raise ImageError(path, f"cannot access path ({_one_line(error)}); {expected}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(
            path,
            f"is a folder, not a file; {expected}, or list the folder's "
            "images with convlens.io.expand_inputs",
        )
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, f"is not a regular file (device, pipe or socket); {expected}")
    if info.st_size == 0:
        raise ImageError(path, f"file is empty (0 bytes); {expected}")


def _open_file(path: Path) -> IO[bytes]:
    """Open ``path`` for reading, turning OS errors into ImageError."""
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it with `with`
    except OSError as error:
        reason = error.strerror or _one_line(error)
        raise ImageError(
            path, f"cannot open file ({reason}); expected a readable image file ({_ACCEPTED_FILES})"
        ) from None


def _decode_file(
    handle: IO[bytes], path: Path, max_pixels: int, background: tuple[int, int, int],
    decode_size: DecodeSize | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Identify, size-check, fully decode and convert an open image file; also return its
    full displayed size (the image itself is reduced where ``decode_size`` allows)."""
    with warnings.catch_warnings():
        # Our cap (checked from the header below) decides; Pillow's softer limit only warns.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(handle, formats=_PILLOW_FORMATS) as image:
                _check_size(image.size, max_pixels, path)
                full = _displayed_size(image)
                if decode_size is not None:
                    _draft(image, full, decode_size(*full))
                image.load()
                rgb = _to_rgb(image, background, path)
                if (rgb.width - rgb.height) * (full[0] - full[1]) < 0:
                    full = (full[1], full[0])  # EXIF read for the size but not applied
                return rgb, full
        except ImageError:
            raise
        except Image.DecompressionBombError as error:
            # Only above pillow_pixel_ceiling(), which max_pixels never exceeds: our cap too.
            found = re.search(r"\((\d+) pixels\)", str(error))
            pixels = int(found.group(1)) if found else max_pixels + 1
            raise ImageError(path, too_many_pixels(pixels, max_pixels)) from None
        except UnidentifiedImageError:
            raise ImageError(path, _unidentified_reason(handle)) from None
        except _DECODE_ERRORS as error:
            raise ImageError(
                path,
                f"image data is truncated or corrupt ({_one_line(error)}); expected a "
                f"complete {_ACCEPTED_FILES} file, re-export or re-download it",
            ) from None


_TURNED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable, as _apply_orientation treats it)."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return 1


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened, not yet decoded image once its orientation is applied."""
    width, height = image.size
    return (height, width) if _orientation(image) in _TURNED else (width, height)


def _draft(image: Image.Image, full: tuple[int, int], wanted: tuple[int, int] | None) -> None:
    """Ask libjpeg for a DCT-scaled decode of at least ``wanted`` (displayed orientation).

    Only JPEGs (and MPO, Pillow's JPEG subclass), only when at least a halving fits on both
    axes; ``draft`` keeps the mode ("RGB" converts nothing) and libjpeg picks the largest of
    1/8, 1/4, 1/2 that leaves each side >= the request.
    """
    if wanted is None or image.format not in ("JPEG", "MPO"):
        return
    want_w, want_h = max(1, int(wanted[0])), max(1, int(wanted[1]))
    if 2 * want_w > full[0] or 2 * want_h > full[1]:
        return
    if _orientation(image) in _TURNED:
        want_w, want_h = want_h, want_w
    image.draft(image.mode, (want_w, want_h))


def _unidentified_reason(handle: IO[bytes]) -> str:
    """Explain why Pillow did not recognise a file, with the zero-side PNG as a special case.

    Pillow refuses a PNG header that declares a zero width or height as "cannot identify",
    which would wrongly suggest the file is not a PNG at all.
    """
    try:
        handle.seek(0)
        head = handle.read(24)
    except OSError:
        head = b""
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return (
                f"image has a zero side ({width}x{height} pixels in the PNG header); "
                "expected an image at least 1x1"
            )
    return f"not a recognised image format; expected a {_ACCEPTED_FILES} file"


def _from_pil(image: Image.Image, max_pixels: int, background: tuple[int, int, int]) -> Image.Image:
    """Convert a caller's PIL image without modifying it."""
    filename = getattr(image, "filename", "")
    path = Path(os.fsdecode(filename)) if filename else None
    _check_size(image.size, max_pixels, path)
    try:
        image.load()  # a lazily opened image decodes here, so truncation surfaces here
    except _DECODE_ERRORS as error:
        raise ImageError(
            path,
            f"cannot read the PIL image's pixels ({_one_line(error)}); "
            "expected a complete, open image",
        ) from None
    return _to_rgb(image, background, path)


def _from_array(
    array: np.ndarray, max_pixels: int, background: tuple[int, int, int]
) -> Image.Image:
    """Convert a numpy array (see :func:`load_image` for the accepted shapes and dtypes)."""
    _check_array_shape(array.shape)
    _check_array_dtype(array.dtype)
    height, width = array.shape[:2]
    _check_size((width, height), max_pixels, None)
    pixels = _array_to_uint8(array)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(pixels))  # L, RGB or RGBA by shape
    return _to_rgb(image, background, None)


def _check_array_shape(shape: tuple[int, ...]) -> None:
    """Accept HxW and HxWxC with C in 1, 3, 4; suggest a fix for common mistakes."""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4)):
        return
    hint = ""
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        hint = " (this looks channels-first; use array.transpose(1, 2, 0))"
    elif len(shape) == 4:
        hint = " (this looks like a batch; pass one image at a time)"
    raise ImageError(
        None, f"unsupported array shape {tuple(shape)}; expected {_ACCEPTED_ARRAYS}{hint}"
    )


def _check_array_dtype(dtype: np.dtype) -> None:
    """Accept bool, uint8, uint16 (either byte order) and floats."""
    if dtype.kind in ("b", "f") or (dtype.kind == "u" and dtype.itemsize in (1, 2)):
        return
    raise ImageError(
        None,
        f"unsupported array dtype {dtype}; expected {_ACCEPTED_DTYPES} "
        "(convert with e.g. array.astype(np.uint8))",
    )


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a validated array to uint8 by the full range of its dtype."""
    if array.dtype.kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype.kind == "u" and array.dtype.itemsize == 1:
        return array
    if array.dtype.kind == "u":
        return _uint16_to_uint8(array)
    return _unit_float_to_uint8(array)


def _unit_float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale floats in [0, 1] to 0-255, rejecting NaN, infinities and values outside."""
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageError(
            None, "float array contains NaN or infinite values; expected finite values in [0, 1]"
        )
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ImageError(
            None,
            f"float array values must lie in [0, 1], got {low:g} to "
            f"{high:g}; divide 0-255 data by 255 or pass uint8",
        )
    return np.rint(values * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------- conversion


def _to_rgb(image: Image.Image, background: tuple[int, int, int], path: Path | None) -> Image.Image:
    """Orient, flatten and convert a loaded image into a new, loaded RGB image."""
    oriented = _apply_orientation(image)
    rgb = _convert_mode(oriented, background, path)
    rgb.load()
    return rgb


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; unreadable EXIF means no rotation.

    Display software ignores EXIF it cannot parse, so we do too rather than reject a photo
    whose pixels are fine.
    """
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return image


def _convert_mode(
    image: Image.Image, background: tuple[int, int, int], path: Path | None
) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto ``background``."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(_uint16_to_uint8(np.asarray(image)))
    if mode == "I":
        return _gray_to_rgb(_int32_to_uint8(np.asarray(image)))
    if mode == "F":
        return _gray_to_rgb(_float_image_to_uint8(np.asarray(image), path))
    if _has_transparency(image):
        return _composite(image.convert("RGBA"), background)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(
            path,
            f"unsupported colour mode {mode!r} ({_one_line(error)}); "
            "expected RGB, greyscale, palette, CMYK or YCbCr",
        ) from None


def _has_transparency(image: Image.Image) -> bool:
    """True for modes with an alpha band, and for palette/L/RGB with a transparency key."""
    if image.mode in _ALPHA_MODES:
        return True
    return image.mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Alpha-composite straight-alpha RGBA onto an opaque background colour."""
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """A 2-D uint8 array as an RGB image with three equal channels."""
    return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 0-65535 to 0-255 by dividing by 257 (65535 / 255), rounding to nearest."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _int32_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale mode ``I`` pixels: as 16-bit data when they fit 0-65535, else by their range.

    Pillow uses mode ``I`` for 16-bit sources after some operations, so 0-65535 is the
    meaningful fixed range; 32-bit data outside it has no fixed range worth keeping.
    """
    if values.min() >= 0 and values.max() <= 65535:
        return _uint16_to_uint8(values)
    return _stretch_to_uint8(values)


def _float_image_to_uint8(values: np.ndarray, path: Path | None) -> np.ndarray:
    """Scale mode ``F`` pixels: [0, 1] times 255, [0, 255] as is, anything else by range."""
    if not np.isfinite(values).all():
        raise ImageError(
            path, "32-bit float image contains NaN or infinite values; expected finite pixel values"
        )
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.rint(values).astype(np.uint8)
    return _stretch_to_uint8(values)


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the observed minimum to 0 and maximum to 255 (a constant image becomes 0)."""
    data = values.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.rint((data - low) * (255.0 / (high - low))).astype(np.uint8)


# ------------------------------------------------------------------------ batch helpers


def expand_inputs(
    paths: Sequence[str | os.PathLike[str]], *, recursive: bool = True
) -> tuple[list[Path], list[InputProblem]]:
    """Turn the files and folders a user named into a sorted list of image files.

    The folders are walked by the one walker, :func:`convlens.io.walk.find_images`, under
    its rules (docs/architecture.md, "Finding images"): hidden entries, symbolic links to
    folders and convlens output folders are skipped, files named explicitly are kept even
    when hidden, a file reached twice is listed once.

    Bad inputs do not raise: each becomes an :class:`InputProblem`, so a batch job can
    process what it found and report the rest.

    Args:
        paths: Files and folders. A single ``str`` or path is treated as a one-item list.
        recursive: Also search sub-folders of the folders given.

    Returns:
        ``(images, problems)``: the image files sorted by path, and one problem per missing
        path, per non-image file, per folder without images, per broken link and per
        unreadable sub-folder, in input order.
    """
    return find_images(paths, recursive=recursive)


# ---------------------------------------------------------------------- output naming

_MAX_NAME_LENGTH = 80
_MAX_NAME_BYTES = 120
_UNDERSCORE_RUNS = re.compile(r"_{2,}")
_DOT_RUNS = re.compile(r"\.{2,}")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


def safe_output_name(path: str | os.PathLike[str], used: set[str]) -> str:
    """A file-system-safe, unique stem for the output files of one input image.

    The stem is derived from the input's file name only (folders, ``..`` and separators of
    either OS are dropped), the name is put in Unicode NFC form, letters and digits of any
    script (Chinese, accented Latin...) and ``. _ -`` are kept while every other character
    (spaces, punctuation, symbols, controls, invisible format characters) becomes ``_``,
    leading dots and dashes and runs of dots are removed, Windows device names are
    prefixed, and the length is capped (80 characters, 120 UTF-8 bytes). Outputs named after it
    therefore stay inside the output directory and never become hidden files. Names are
    de-duplicated case-insensitively (for macOS and Windows) by appending ``-2``,
    ``-3``...

    Args:
        path: The input image path, e.g. ``photos/Café 1.JPG``.
        used: Stems already taken in this output directory. The returned stem is added to
            it, so passing the same set for a whole batch keeps every name unique.

    Returns:
        A stem such as ``Café_1``; never empty, ``.`` or ``..``, at most 80 characters.
    """
    stem = _safe_stem(os.fsdecode(os.fspath(path)))
    name = _unique(stem, used)
    used.add(name)
    return name


def _safe_stem(raw: str) -> str:
    """The sanitized stem of the last path component of ``raw``."""
    name = re.split(r"[\\/]", raw)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    composed = unicodedata.normalize("NFC", stem)
    kept = "".join(ch if _is_safe_char(ch) else "_" for ch in composed)
    safe = _DOT_RUNS.sub(".", _UNDERSCORE_RUNS.sub("_", kept)).lstrip(".-")
    safe = _cap(safe).rstrip(".")
    if not any(ch.isalnum() for ch in safe):
        return "image"
    if safe.split(".")[0].upper() in _WINDOWS_RESERVED:
        safe = _cap("_" + safe)
    return safe


def _is_safe_char(ch: str) -> bool:
    """Letters, digits and combining marks of any script, and ``. _ -``: nothing else.

    Spaces, punctuation, symbols, controls and invisible format characters (such as the
    right-to-left override, which can disguise an extension) become ``_``.
    """
    return ch in "._-" or unicodedata.category(ch)[0] in "LNM"


def _cap(text: str) -> str:
    """At most 80 characters and 120 UTF-8 bytes: room for ``.classN.METHOD.png`` under the
    255-byte name limit of common file systems, whatever the script."""
    text = text[:_MAX_NAME_LENGTH]
    while len(text.encode("utf-8")) > _MAX_NAME_BYTES:
        text = text[:-1]
    return text


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-N`` with the smallest N >= 2 not in ``used`` (ignoring case)."""
    taken = {name.casefold() for name in used}
    if stem.casefold() not in taken:
        return stem
    number = 2
    while True:
        suffix = f"-{number}"
        candidate = stem[: _MAX_NAME_LENGTH - len(suffix)] + suffix
        if candidate.casefold() not in taken:
            return candidate
        number += 1
