"""Random transforms applied to the image before every forward pass (transformation robustness).

An image that excites a unit only at one exact pixel alignment is mostly adversarial
noise. Jittering, scaling and rotating the image a little at every step makes the
optimiser find patterns that survive those changes, which look far more natural (Olah et
al. 2017, "Feature Visualization", section "Transformation robustness"; Mordvintsev et al.
2015 jittered DeepDream the same way).

A transform is a callable ``t(images, generator) -> images`` on ``(B, C, H, W)`` tensors in
[0, 1]; one random draw applies to the whole batch. All randomness comes from the
``torch.Generator`` that :func:`~convlens.visualization.optimize.visualize` seeds with
``seed`` (a CPU generator: the draws are the same on every device). Compose them with
:func:`compose` or pass a list::

    from convlens.visualization import transforms as T
    cl.visualize(clf, goal, transforms=[T.pad(8), T.jitter(8), T.random_rotate(range(-5, 6))])

Presets:

* ``"standard"`` (the default): one random affine resampling per step: a shift of up
  to 12 px, a zoom of 0.80-1.20 and a rotation of -15..15 degrees, grey outside the
  image, **output at the input's size**. That is Lucid's pad-jitter-scale-rotate-jitter
  chain with 1.5-2x wider ranges, in a single ``grid_sample`` and without growing the
  image (the chain resamples twice and feeds the network images about 7% larger in each
  dimension). Measured with benchmarks/bench_visualization.py (CPU, 1 thread, 16 class
  objectives at 224 px): a step took 1.39x a forward+backward with the chain, 0.99x with
  the single resampling (about 10% noise on that busy machine). The wider ranges gave
  visibly less of the fine pixel-grid texture that EfficientNet-Lite0's stride-2
  depthwise convolutions favour, and higher activations, at the same number of steps
  (compared at 128 px, 128 steps, 6 channels of blocks.2 and blocks.8).
* ``"lucid"``: Lucid's chain as Lucid and Lucent users know it: pad 12 (grey), jitter 8,
  scale 0.90-1.10, rotate -10..10 degrees (0 more likely), jitter 4.
* ``"none"`` or ``None``: no transforms (DeepDream's exact framing, tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from convlens.errors import ObjectiveError

TransformFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
TransformLike = str | None | TransformFn | Sequence[TransformFn]

__all__ = ["Compose", "Jitter", "Pad", "RandomAffine", "RandomRotate", "RandomScale",
           "compose", "jitter", "lucid", "pad", "random_affine", "random_rotate", "random_scale",
           "resolve", "rotate", "standard"]


def _choice(options: Sequence[float], generator: torch.Generator) -> float:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


class Pad:
    """Pad every side by ``width`` pixels: ``"constant"`` (``value``), ``"reflect"`` or
    ``"replicate"``. Padding with grey gives the jitter room without wrapping content."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5) -> None:
        if width < 0:
            raise ObjectiveError(f"pad width must be >= 0, got {width}")
        if mode not in ("constant", "reflect", "replicate"):
            raise ObjectiveError(f"pad mode must be constant, reflect or replicate, got {mode!r}")
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.width == 0:
            return x
        w = self.width
        if self.mode == "constant":
            return F.pad(x, (w, w, w, w), mode="constant", value=self.value)
        return F.pad(x, (w, w, w, w), mode=self.mode)

    def __repr__(self) -> str:
        return f"pad({self.width}, {self.mode!r})"


class Jitter:
    """A random crop ``d`` pixels smaller in each dimension: a shift by 0..d pixels."""

    def __init__(self, d: int) -> None:
        if d < 0:
            raise ObjectiveError(f"jitter must be >= 0 pixels, got {d}")
        self.d = int(d)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.d == 0:
            return x
        height, width = x.shape[-2:]
        if self.d >= min(height, width):
            raise ObjectiveError(f"jitter({self.d}) is too large for a {height}x{width} image")
        dy, dx = (int(v) for v in torch.randint(self.d + 1, (2,), generator=generator))
        return x[..., dy:dy + height - self.d, dx:dx + width - self.d]

    def __repr__(self) -> str:
        return f"jitter({self.d})"


class RandomScale:
    """Resize (bilinear) by a factor drawn uniformly from ``scales``."""

    def __init__(self, scales: Iterable[float]) -> None:
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise ObjectiveError("random_scale needs one or more positive factors")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        factor = _choice(self.scales, generator)
        if factor == 1.0:
            return x
        height, width = x.shape[-2:]
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"random_scale({min(self.scales):g}..{max(self.scales):g})"


class RandomRotate:
    """Rotate about the centre by an angle (degrees) drawn uniformly from ``angles``;
    corners take the nearest border colour."""

    def __init__(self, angles: Iterable[float]) -> None:
        self.angles = [float(a) for a in angles]
        if not self.angles:
            raise ObjectiveError("random_rotate needs one or more angles")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angle = _choice(self.angles, generator)
        if angle == 0.0:
            return x
        return rotate(x, angle)

    def __repr__(self) -> str:
        return f"random_rotate({min(self.angles):g}..{max(self.angles):g})"


def _theta(x: torch.Tensor, degrees: float, scale: float = 1.0, shift: tuple[float, float] =
           (0.0, 0.0)) -> torch.Tensor:
    """Affine matrix (output -> input, ``affine_grid``'s [-1, 1] coordinates) for a rotation
    by ``degrees`` counter-clockwise, a zoom by ``scale`` and a shift of ``(dx, dy)`` pixels.

    The aspect-ratio factors keep the rotation rigid on non-square images.
    """
    height, width = x.shape[-2:]
    radians = math.radians(degrees)
    cos, sin = math.cos(radians) / scale, math.sin(radians) / scale
    dx, dy = shift
    return torch.tensor([[cos, -sin * height / width, 2.0 * dx / width],
                         [sin * width / height, cos, 2.0 * dy / height]],
                        dtype=x.dtype, device=x.device)


def _resample(x: torch.Tensor, theta: torch.Tensor, fill: float | None) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    if fill is None:  # the nearest border colour
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + fill


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate ``(B, C, H, W)`` images counter-clockwise by ``degrees`` (bilinear, border)."""
    return _resample(x, _theta(x, degrees), None)


class RandomAffine:
    """Shift, zoom and rotate in one bilinear resampling, keeping the image size.

    Args:
        translate: Largest shift in pixels (drawn uniformly in ``-translate..translate``
            for each axis).
        scales: Zoom factors to draw from (above 1 zooms in).
        angles: Rotations in degrees to draw from.
        fill: Colour outside the image (grey by default, as a constant pad).
    """

    def __init__(self, translate: int = 12, scales: Iterable[float] = (1.0,),
                 angles: Iterable[float] = (0.0,), fill: float = 0.5) -> None:
        if translate < 0:
            raise ObjectiveError(f"translate must be >= 0 pixels, got {translate}")
        self.translate = int(translate)
        self.scales = [float(s) for s in scales]
        self.angles = [float(a) for a in angles]
        if not self.scales or min(self.scales) <= 0 or not self.angles:
            raise ObjectiveError("random_affine needs positive scales and at least one angle")
        self.fill = float(fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = _choice(self.scales, generator)
        angle = _choice(self.angles, generator)
        dx, dy = (int(v) - self.translate
                  for v in torch.randint(2 * self.translate + 1, (2,), generator=generator))
        return _resample(x, _theta(x, angle, scale, (dx, dy)), self.fill)

    def __repr__(self) -> str:
        return (f"random_affine(translate={self.translate}, scales={min(self.scales):g}.."
                f"{max(self.scales):g}, angles={min(self.angles):g}..{max(self.angles):g})")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable[TransformFn]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ObjectiveError(f"a transform must be callable(images, generator), got "
                                     f"{type(t).__name__}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return f"compose({', '.join(map(repr, self.transforms))})"


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Pad:
    """See :class:`Pad`."""
    return Pad(width, mode, value)


def jitter(d: int) -> Jitter:
    """See :class:`Jitter`."""
    return Jitter(d)


def random_scale(scales: Iterable[float]) -> RandomScale:
    """See :class:`RandomScale`."""
    return RandomScale(scales)


def random_rotate(angles: Iterable[float]) -> RandomRotate:
    """See :class:`RandomRotate`."""
    return RandomRotate(angles)


def random_affine(translate: int = 12, scales: Iterable[float] = (1.0,),
                  angles: Iterable[float] = (0.0,), fill: float = 0.5) -> RandomAffine:
    """See :class:`RandomAffine`."""
    return RandomAffine(translate, scales, angles, fill)


def compose(*transforms: TransformFn) -> Compose:
    """Chain transforms: ``compose(pad(12), jitter(8))``."""
    return Compose(transforms)


def standard() -> RandomAffine:
    """The default robustness recipe, one resampling (see the module docstring)."""
    return RandomAffine(12, [0.8 + 0.04 * i for i in range(11)], range(-15, 16), 0.5)


def lucid() -> Compose:
    """Lucid's chain: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10, jitter 4."""
    return Compose([
        Pad(12, "constant", 0.5),
        Jitter(8),
        RandomScale([0.9 + 0.02 * i for i in range(11)]),
        RandomRotate(list(range(-10, 11)) + [0] * 5),
        Jitter(4),
    ])


_NAMED: dict[str, Callable[[], TransformFn | None]] = {"standard": standard, "lucid": lucid,
                                                      "none": lambda: None}


def resolve(spec: TransformLike) -> TransformFn | None:
    """``"standard"``, ``"none"``/None, one transform, or a sequence of them -> one callable."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ObjectiveError(f"unknown transforms {spec!r}; use 'standard', 'lucid', 'none', "
                                 "or a list of transforms from convlens.visualization.transforms")
        return _NAMED[spec]()
    if isinstance(spec, (list, tuple)):
        return Compose(spec)
    if callable(spec):
        return spec
    raise ObjectiveError(f"transforms must be 'standard', 'none', a callable or a list of "
                         f"them, got {type(spec).__name__}")
