"""Deletion and insertion (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC, section 4.1).

Deletion removes pixels from the image, most relevant first, and follows the explained
class's score; a good map makes it fall fast (low area under the curve). Insertion starts
from a substrate and puts the image's pixels back, most relevant first; a good map makes the
score rise fast (high area). The defaults are the authors' reference code (preset ``rise``,
see :mod:`convlens.metrics.presets`): ``step`` pixels change per step, all channels of a
pixel at once; the curve has ``ceil(H W / step) + 1`` points, the first on the unchanged
start; the score is the softmax probability; the area is the trapezoid rule on [0, 1].

Ties in the map keep raster order (a stable descending sort); the reference code's
``np.flip(np.argsort(...))`` puts tied pixels in reverse raster order. A constant map has
no order at all and is reported as such (``Scores.undefined``), not scored.

Speed: each curve point is one forward of one perturbed copy. Copies of several images and
steps are built on the fly, ``batch_size`` at a time, on the model's device, so the cost is
the forwards themselves (benchmarks/bench_metrics.py). The default batch depends on the
device (:func:`convlens.metrics.core.default_batch_size`): on a CPU a small batch is cheaper
per image than a large one (benchmarks/bench_metric_batch.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.attribution.targets import TargetLike
from convlens.metrics.core import (
    CONSTANT,
    MetricError,
    Scores,
    check_positive,
    class_scores,
    constant_rows,
    descending_ranks,
    finish,
    pixel_maps,
    prepare_x,
    register_metric,
    resolve,
    trapezoid,
    unwrap,
)

REFERENCE = ("Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of "
             "Black-box Models. BMVC 2018")


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """The reference code's ``gkern``: ``scipy.ndimage.gaussian_filter`` of a centred delta.

    Its boundary mode (``reflect``: half-sample symmetric) with sigma 5 on 11 pixels folds
    the Gaussian's tails back into the window, so this is not a truncated Gaussian; we build
    it the same way (scipy's 1-D kernel, radius ``int(4 sigma + 0.5)``, applied along both
    axes) for identical insertion curves, without importing SciPy at run time.
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * offsets.astype(np.float64) ** 2 / sigma ** 2)
    weights /= weights.sum()
    centre = size // 2
    line = np.zeros(size)
    for i in range(size):
        position = (i + offsets) % (2 * size)  # reflect: d c b a | a b c d | d c b a
        position = np.where(position >= size, 2 * size - 1 - position, position)
        line[i] = weights[position == centre].sum()
    return np.outer(line, line)


def blur(x: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Per-channel Gaussian blur with zero padding (``conv2d(x, kern, padding=size // 2)``)."""
    check_positive("blur_kernel", size)
    check_positive("blur_sigma", sigma, integer=False)
    kernel = torch.as_tensor(gaussian_kernel(size, sigma), dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, size, size).contiguous()
    return F.conv2d(x, weight, padding=size // 2, groups=channels)


def substrate_of(x: torch.Tensor, substrate: object, size: int, sigma: float) -> torch.Tensor:
    """``"zeros"``, ``"blur"``, ``"mean"`` (each image's channel means) or a number."""
    if substrate == "zeros":
        return torch.zeros_like(x)
    if substrate == "blur":
        return blur(x, size, sigma)
    if substrate == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    if isinstance(substrate, (int, float)) and not isinstance(substrate, bool):
        return torch.full_like(x, float(substrate))
    raise MetricError(f"option substrate={substrate!r} is not valid; choose 'zeros', 'blur', "
                      "'mean' or a number (in the model's normalised input units)")


def pixels_per_step(pixels: int, step: int | None, steps: int | None) -> int:
    """``step`` pixels, or ``ceil(pixels / steps)`` when ``steps`` is given instead."""
    if (step is None) == (steps is None):
        raise MetricError(f"give exactly one of step (pixels per step) and steps (number of "
                          f"steps); got step={step!r}, steps={steps!r}")
    if steps is not None:
        check_positive("steps", steps)
        return math.ceil(pixels / steps)
    check_positive("step", step)
    return int(step)


def causal_curves(module: nn.Module, x: torch.Tensor, flat_map: torch.Tensor,
                  classes: torch.Tensor, start: torch.Tensor, end: torch.Tensor, step: int,
                  batch_size: int | None, output: str) -> torch.Tensor:
    """Scores ``(N, K)`` along the path from ``start`` to ``end``, most relevant pixels first.

    Point k of image i is ``start`` with its ``k * step`` most relevant pixels (all channels)
    taken from ``end``. Points of all images are scored together, ``batch_size`` at a time.
    """
    n, _, height, width = x.shape
    pixels = height * width
    points = math.ceil(pixels / step) + 1
    ranks = descending_ranks(flat_map).view(n, 1, height, width)
    thresholds = torch.arange(points, device=x.device) * step

    def make_batch(first: int, stop: int) -> torch.Tensor:
        index = torch.arange(first, stop, device=x.device)
        image, point = index // points, index % points
        replaced = ranks[image] < thresholds[point].view(-1, 1, 1, 1)
        return torch.where(replaced, end[image], start[image])

    classes = classes.repeat_interleave(points)
    return class_scores(module, n * points, make_batch, classes, batch_size, output).view(
        n, points)


def _run(kind: str, model: nn.Module, x: torch.Tensor, maps: object, target: TargetLike,
         step: int | None, steps: int | None, substrate: object, blur_kernel: int,
         blur_sigma: float, output: str, batch_size: int | None, options: dict) -> Scores:
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    flat = pixel_maps(maps, x).flatten(1)
    _, classes = resolve(module, x, target, labels)
    step = pixels_per_step(flat.shape[1], step, steps)
    base = substrate_of(x, substrate, blur_kernel, blur_sigma)
    start, end = (x, base) if kind == "deletion" else (base, x)
    curves = causal_curves(module, x, flat, classes, start, end, step, batch_size, output)
    undefined = [CONSTANT if c else None for c in constant_rows(flat)]
    fraction = np.minimum(np.arange(curves.shape[1]) * step / flat.shape[1], 1.0)
    return finish(kind, trapezoid(curves), undefined, options,
                  curves={kind: curves.cpu().numpy()}, curve_x=fraction,
                  curve_label="fraction of pixels " + ("removed" if kind == "deletion"
                                                       else "inserted"))


@register_metric("deletion", family="faithfulness", needs="maps", reference=REFERENCE,
                 summary="area under the class score as the most relevant pixels are removed "
                         "(lower is better)", higher_is_better=False)
def deletion(model: nn.Module, x: torch.Tensor, maps: object, target: TargetLike = None, *,
             step: int | None = 224, steps: int | None = None, substrate: object = "zeros",
             blur_kernel: int = 11, blur_sigma: float = 5.0, output: str = "probability",
             batch_size: int | None = None) -> Scores:
    """Deletion AUC per image (Petsiuk et al. 2018); defaults = preset ``rise``.

    Args:
        model: ``nn.Module`` or Classifier returning logits.
        x: Preprocessed images ``(N, C, H, W)``.
        maps: Attribution maps (see :func:`convlens.metrics.core.pixel_maps`).
        target: The explained class: ``None`` (the prediction), an index, one per image, a name.
        step: Pixels removed per step (224 in the reference code, at 224 x 224).
        steps: Alternatively, the number of steps (``step`` must then be None).
        substrate: What removed pixels become: ``"zeros"``, ``"blur"``, ``"mean"``, a number.
        blur_kernel: Side of the Gaussian kernel when the substrate is ``"blur"``.
        blur_sigma: Its sigma.
        output: ``"probability"`` (softmax of the class) or ``"logit"``.
        batch_size: Perturbed copies forwarded at once (bounds memory); ``None``: by device
            (:func:`~convlens.metrics.core.default_batch_size`: 2 on a CPU, 64 on a GPU).
    """
    options = dict(step=step, steps=steps, substrate=substrate, blur_kernel=blur_kernel,
                   blur_sigma=blur_sigma, output=output, batch_size=batch_size)
    return _run("deletion", model, x, maps, target, options=options, **options)


@register_metric("insertion", family="faithfulness", needs="maps", reference=REFERENCE,
                 summary="area under the class score as the most relevant pixels are put back "
                         "into a blurred image (higher is better)", higher_is_better=True)
def insertion(model: nn.Module, x: torch.Tensor, maps: object, target: TargetLike = None, *,
              step: int | None = 224, steps: int | None = None, substrate: object = "blur",
              blur_kernel: int = 11, blur_sigma: float = 5.0, output: str = "probability",
              batch_size: int | None = None) -> Scores:
    """Insertion AUC per image (Petsiuk et al. 2018); defaults = preset ``rise``.

    Same arguments as :func:`deletion`; ``substrate`` is where the curve starts from
    (the reference code's Gaussian blur, kernel 11, sigma 5).
    """
    options = dict(step=step, steps=steps, substrate=substrate, blur_kernel=blur_kernel,
                   blur_sigma=blur_sigma, output=output, batch_size=batch_size)
    return _run("insertion", model, x, maps, target, options=options, **options)
