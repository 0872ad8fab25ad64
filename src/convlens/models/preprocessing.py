"""From a photo to the tensor a network expects, and back from its grid to the photo.

Preprocessing records where the network's input lies in the original image (the
:class:`Geometry`), so a heatmap computed on the network's 224x224 input can be laid back
exactly over the photo as displayed, whatever the resize mode was.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convlens.errors import ModelLoadError, non_finite

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
}


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

    Attributes:
        input_size: ``(height, width)`` of the network's input.
        resize: ``"center_crop"`` (shorter side to ``resize_size``, then a central crop, the
            ImageNet evaluation protocol), ``"squash"`` (resize to ``input_size``, ignoring the
            aspect ratio) or ``"pad"`` (fit inside, pad with the mean colour).
        resize_size: Shorter side before the crop; default ``input_size / 0.875``.
        mean: Per-channel mean, in [0, 1] pixel units, subtracted after scaling.
        std: Per-channel standard deviation to divide by.
        interpolation: Resampling filter: nearest, bilinear, bicubic or lanczos.
    """

    input_size: tuple[int, int] = (224, 224)
    resize: str = "center_crop"
    resize_size: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", check_input_size(self.input_size))
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
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _shorter_side(self) -> int:
        if self.resize_size is not None:
            return int(self.resize_size)
        return int(round(min(self.input_size) / 0.875))

    def resize_image(self, image: Image.Image) -> tuple[Image.Image, Geometry]:
        """Resize/crop/pad ``image`` to the input size; returns the result and its geometry."""
        width, height = image.size
        out_h, out_w = self.input_size
        method = _INTERPOLATIONS[self.interpolation]
        if self.resize == "squash":
            return image.resize((out_w, out_h), method), Geometry((width, height),
                                                                 (0.0, 0.0, width, height))
        if self.resize == "center_crop":
            scale = self._shorter_side() / min(width, height)
            new_w, new_h = max(out_w, round(width * scale)), max(out_h, round(height * scale))
            left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
            resized = image.resize((new_w, new_h), method)
            cropped = resized.crop((left, top, left + out_w, top + out_h))
            sx, sy = width / new_w, height / new_h
            box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
            return cropped, Geometry((width, height), box)
        # pad: fit the whole image inside, centred, on the mean colour
        scale = min(out_w / width, out_h / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        fill = tuple(round(m * 255) for m in self.mean[:3])
        canvas = Image.new("RGB", (out_w, out_h), fill)
        left, top = (out_w - new_w) // 2, (out_h - new_h) // 2
        canvas.paste(image.resize((new_w, new_h), method), (left, top))
        sx, sy = width / new_w, height / new_h
        box = (-left * sx, -top * sy, (out_w - left) * sx, (out_h - top) * sy)
        return canvas, Geometry((width, height), box)

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
