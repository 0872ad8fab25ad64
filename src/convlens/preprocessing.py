"""From a photo to the tensor a network expects, and back from its grid to the photo.

Preprocessing records where the network's input lies in the original image (the
:class:`Geometry`), so a heatmap computed on the network's 224x224 input can be laid back
exactly over the photo as displayed, whatever the resize mode was.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convlens.errors import ModelLoadError, non_finite
from convlens.io.images import DEFAULT_MAX_PIXELS, load_image, load_reduced

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_MODES = ("center_crop", "squash", "pad")
MAX_INPUT_PIXELS = 64_000_000
"""The largest network input, height x width: the default photo pixel cap
(``convlens.io.images.DEFAULT_MAX_PIXELS``, the same number; tests/cli/test_messages.py
checks it), since a larger input could only be an upscaled photo. 8000x8000 is already 768
MB per image in float32; a typing slip like 60000 used to end in an allocation traceback."""


def check_input_size(size: object) -> tuple[int, int]:
    """``size`` (an int or ``(height, width)``) as ``(height, width)``, or a ModelLoadError
    naming what is accepted: positive integers with at most :data:`MAX_INPUT_PIXELS` pixels."""
    pair = (size, size) if _whole(size) else size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(_whole, pair))
            and min(pair) >= 1):
        raise ModelLoadError(f"input_size must be a positive int or (height, width), got "
                             f"{size!r}")
    height, width = int(pair[0]), int(pair[1])
    if height * width > MAX_INPUT_PIXELS:
        raise ModelLoadError(
            f"input_size {height}x{width} = {height * width:,} pixels is above the limit of "
            f"{MAX_INPUT_PIXELS:,} (8000x8000), the largest photo convlens decodes by "
            "default: a larger input could only be an upscaled photo. Give the size the "
            "model was trained at, typically 224 to 1024 (CLI: --input-size)")
    return height, width


def _whole(value: object) -> bool:
    """An int (numpy's too) or a float without a fraction; not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, float) and value.is_integer()


_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
DEFAULT_CROP_PCT = 0.875  # timm's and torchvision's ImageNet evaluation: 224 of 256
DEFAULT_DECODE_MARGIN = 2
"""A reduced JPEG decode keeps at least this many times the resize step's output per side.
Measured (BENCHMARKS.md, "Reduced-size JPEG decoding"): with 2, the bundled model's Grad-CAM
maps of 12-megapixel photos correlate at r >= 0.999 with the full decode's and move 3x less
than with 1, which is only 25-35 % faster on detailed photos."""


def _check_resize_size(size: object) -> int | tuple[int, int]:
    """``resize_size`` as an int or an ``(h, w)`` pair of ints >= 1, or one clear error."""
    pair = isinstance(size, (tuple, list))
    values = list(size) if pair else [size]
    if len(values) != (2 if pair else 1) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
            for v in values):
        raise ModelLoadError(
            f"resize_size must be an int >= 1 or (height, width), got {size!r}")
    return (int(values[0]), int(values[1])) if pair else int(values[0])


def _crop_offset(size: int, out: int) -> int:
    """Where a central crop of ``out`` starts in ``size`` pixels (negative: padding).

    torchvision's ``center_crop`` and timm's ``center_crop_or_pad``: ``round`` (to even) of
    the half difference, or ``(out - size) // 2`` of padding before the image."""
    if out > size:
        return -((out - size) // 2)
    return int(round((size - out) / 2.0))


@dataclass(frozen=True)
class Geometry:
    """Where the network's input lies in an original image.

    Attributes:
        original_size: ``(width, height)`` of the photo as displayed.
        box: ``(left, top, right, bottom)`` of the network's input in the photo's pixel
            coordinates (floats; it extends past the photo for the ``pad`` mode).
    """

    original_size: tuple[int, int]
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """How images become a network's input.

    The arithmetic is timm's evaluation transform (``timm.data.create_transform`` with
    ``is_training=False``), pixel for pixel, so a ``timm:NAME`` model sees here what it sees
    under timm (docs/architecture.md, "Models"): resize to the *scale size*, then a central
    crop (or pad) to ``input_size``.

    Attributes:
        input_size: ``(height, width)`` of the network's input.
        resize: ``"center_crop"`` (keep the aspect ratio, cover the scale size, crop the
            centre: the ImageNet evaluation protocol), ``"squash"`` (resize to the scale size
            ignoring the aspect ratio, then crop the centre) or ``"pad"`` (keep the aspect
            ratio, fit inside the scale size, pad with the mean colour; timm's ``"border"``).
        resize_size: The scale size. An int ``S`` with ``center_crop`` is torchvision's
            ``Resize(S)``: the shorter side becomes ``S`` and the longer one
            ``int(S * long / short)`` (truncated, as torchvision does); with ``squash`` and
            ``pad`` it means ``(S, S)``. A pair ``(h, w)`` with ``center_crop`` scales by
            ``min(height / h, width / w)`` with rounded sides (timm's ``ResizeKeepRatio``).
            Default: ``floor(side / 0.875)`` per side for ``center_crop``, ``input_size``
            (no crop) for ``squash`` and ``pad``.
        mean: Per-channel mean, in [0, 1] pixel units, subtracted after scaling.
        std: Per-channel standard deviation to divide by.
        interpolation: Resampling filter: nearest, bilinear, bicubic, lanczos, box, hamming
            (PIL's, as torchvision uses them on PIL images).
        decode_margin: JPEG files are decoded at reduced size (libjpeg's DCT scaling) as
            long as the decoded photo keeps at least ``decode_margin`` times the resize
            step's output on each side (:meth:`decode_size`), so the final resize still only
            shrinks; ``None`` decodes every file at full size. Part of the preprocessing's
            identity (its repr, which the result stores fingerprint), because it changes
            the pixels the network sees.
    """

    input_size: tuple[int, int] = (224, 224)
    resize: str = "center_crop"
    resize_size: int | tuple[int, int] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    decode_margin: int | None = DEFAULT_DECODE_MARGIN

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", check_input_size(self.input_size))
        if self.resize_size is not None:
            object.__setattr__(self, "resize_size", _check_resize_size(self.resize_size))
        if self.resize not in RESIZE_MODES:
            raise ModelLoadError(
                f"unknown resize mode {self.resize!r}; valid: {', '.join(RESIZE_MODES)}"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ModelLoadError(
                f"unknown interpolation {self.interpolation!r}; valid: {', '.join(_INTERPOLATIONS)}"
            )
        if (len(self.mean) != len(self.std) or any(s <= 0 for s in self.std)
                or non_finite(tuple(self.mean)) or non_finite(tuple(self.std))):
            raise ModelLoadError(f"mean and std need one finite value per channel, std > 0; "
                                 f"got mean={tuple(self.mean)}, std={tuple(self.std)}")
        margin = self.decode_margin
        if margin is not None and not (_whole(margin) and margin >= 1):
            raise ModelLoadError(f"decode_margin must be an int >= 1 (or None: decode at full "
                                 f"size), got {margin!r}")
        object.__setattr__(self, "decode_margin", None if margin is None else int(margin))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _scale_size(self) -> tuple[int, int]:
        """``(h, w)`` the image is resized towards before the crop (see ``resize_size``)."""
        if isinstance(self.resize_size, int):
            return self.resize_size, self.resize_size
        if self.resize_size is not None:
            return self.resize_size
        out_h, out_w = self.input_size
        if self.resize == "center_crop":
            return math.floor(out_h / DEFAULT_CROP_PCT), math.floor(out_w / DEFAULT_CROP_PCT)
        return out_h, out_w

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(new_w, new_h)`` of the resize, with torchvision's and timm's own rounding."""
        scale_h, scale_w = self._scale_size()
        if self.resize == "squash":
            return scale_w, scale_h
        if self.resize == "center_crop" and scale_h == scale_w:
            # torchvision Resize(int): the long side is truncated, not rounded
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(scale_h * long / short)
            return (scale_h, new_long) if width <= height else (new_long, scale_h)
        # timm ResizeKeepRatio: cover (center_crop) or fit inside (pad), sides rounded
        ratio_h, ratio_w = height / scale_h, width / scale_w
        ratio = max(ratio_h, ratio_w) if self.resize == "pad" else min(ratio_h, ratio_w)
        return max(1, round(width / ratio)), max(1, round(height / ratio))

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest ``(width, height)`` a ``width`` x ``height`` photo may be decoded at.

        ``decode_margin`` times the resize step's output on each side (never more than the
        photo), so that the resize from a reduced decode still shrinks by that factor; None
        when ``decode_margin`` is None (always decode at full size). The one place that
        decides how far decoding may reduce a photo (docs/architecture.md, "Decoding").
        """
        if self.decode_margin is None:
            return None
        new_w, new_h = self._resized_size(width, height)
        return (min(width, self.decode_margin * new_w),
                min(height, self.decode_margin * new_h))

    def load_file(self, path: str | os.PathLike[str], *, max_pixels: int | None = None,
                  keep_photo: bool = False
                  ) -> tuple[torch.Tensor, Geometry, Image.Image | None]:
        """A photo file -> the network's input ``(C, H, W)``, its geometry, and the photo.

        The one function that turns a file into a model input: explain, audit, evaluate,
        predict and the report all call it, so they see the same pixels. JPEGs are decoded
        at reduced size where :meth:`decode_size` allows
        (:func:`convlens.io.images.load_reduced`); the resize is computed from the full
        size, so the geometry (and the overlays drawn with it) is the full decode's.

        Args:
            path: An image file.
            max_pixels: The pixel cap (default: the library's, see
                :func:`convlens.io.images.load_image`); applies to the full size.
            keep_photo: Also return the full-size photo (for drawing overlays on it): a
                second, full decode when the first was reduced.

        Returns:
            ``(tensor, geometry, photo)``; ``photo`` is None unless ``keep_photo``.

        Raises:
            ImageError: the file cannot be read (see :func:`convlens.io.images.load_image`).
        """
        cap = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        image, full = load_reduced(path, self.decode_size, max_pixels=cap)
        resized, geometry = self.resize_image(image, full_size=full)
        photo = None
        if keep_photo:
            photo = image if image.size == full else load_image(path, max_pixels=cap)
        return self.to_tensor(resized), geometry, photo

    def resize_image(self, image: Image.Image, full_size: tuple[int, int] | None = None
                     ) -> tuple[Image.Image, Geometry]:
        """Resize/crop/pad ``image`` to the input size; returns the result and its geometry.

        ``full_size``: the ``(width, height)`` of the photo when ``image`` is a reduced
        decode of it (:meth:`load_file`): the resize and the geometry are those of the
        full-size photo, only the source pixels are fewer.
        """
        width, height = full_size or image.size
        out_h, out_w = self.input_size
        new_w, new_h = self._resized_size(width, height)
        resized = image.resize((new_w, new_h), _INTERPOLATIONS[self.interpolation])
        left, top = _crop_offset(new_w, out_w), _crop_offset(new_h, out_h)
        if left >= 0 and top >= 0:
            result = resized.crop((left, top, left + out_w, top + out_h))
        else:  # smaller than the input: padded, by torchvision with black, by timm's border
            # mode (our "pad") with the mean colour; images arrive as RGB (io.images)
            fill = tuple(round(m * 255) for m in self.mean[:3]) if self.resize == "pad" else 0
            result = Image.new("RGB", (out_w, out_h), fill)
            x0, y0 = max(0, left), max(0, top)
            inside = (x0, y0, min(new_w, x0 + out_w), min(new_h, y0 + out_h))
            result.paste(resized.crop(inside),
                         (max(0, -left), max(0, -top)))
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
        return result, Geometry((width, height), box)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image of the input size -> normalised float tensor ``(C, H, W)``."""
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        if tensor.shape[0] != self.channels:
            if self.channels == 1:
                tensor = tensor.mean(0, keepdim=True)
            else:
                raise ModelLoadError(
                    f"the model expects {self.channels} channels; images arrive with "
                    f"{tensor.shape[0]}"
                )
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (tensor - mean) / std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation: ``(N, C, H, W)`` back to [0, 1] pixel units."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return x * std + mean


def map_to_original(heatmap: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """Lay a 2-D map over the network's input back onto the original photo's pixel grid.

    The map is resized (bilinear) to the size the input region has in the photo and pasted
    at its place; photo pixels the network never saw (cropped away) get 0.

    Args:
        heatmap: ``(h, w)`` map covering the network's input.
        geometry: The geometry recorded by :meth:`Preprocessing.resize_image`.

    Returns:
        ``(height, width)`` float32 array at the photo's size.
    """
    width, height = geometry.original_size
    left, top, right, bottom = geometry.box
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    resized = F.interpolate(heatmap[None, None].float(), size=(box_h, box_w), mode="bilinear",
                            align_corners=False)[0, 0].cpu().numpy()
    canvas = np.zeros((height, width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    src_x0, src_y0 = max(0, -x0), max(0, -y0)
    dst_x0, dst_y0 = max(0, x0), max(0, y0)
    w = min(width - dst_x0, box_w - src_x0)
    h = min(height - dst_y0, box_h - src_y0)
    if w > 0 and h > 0:
        canvas[dst_y0:dst_y0 + h, dst_x0:dst_x0 + w] = resized[src_y0:src_y0 + h,
                                                               src_x0:src_x0 + w]
    return canvas



def coverage_mask(geometry: Geometry) -> np.ndarray:
    """``(height, width)`` bool array: True where the network saw the photo."""
    width, height = geometry.original_size
    left, top, right, bottom = (round(v) for v in geometry.box)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, top):max(0, min(height, bottom)), max(0, left):max(0, min(width, right))] = True
    return mask
