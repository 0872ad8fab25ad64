"""Perturbation family: change the input, watch the target's score.

No gradients: every method runs the model under ``torch.no_grad`` on batches of perturbed
copies (at most ``batch_size`` per pass), building the perturbations chunk by chunk on
``x``'s device so memory stays that of one ``batch_size`` forward.

Both methods return one value per pixel, ``(N, 1, H, W)``: a window or mask covers every
colour channel at once, so per-channel maps would be identical copies (and a channel sum
at presentation would triple them). The map broadcasts against ``x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convlens.attribution.core import Problem, register
from convlens.attribution.gradients import check_batch_size, make_baseline
from convlens.errors import MethodError


def _pair(value: object, name: str) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in pair)):
        raise MethodError(f"{name} must be a positive int or a pair (height, width) of them, "
                          f"got {value!r}")
    return int(pair[0]), int(pair[1])


def window_starts(size: int, window: int, stride: int) -> torch.Tensor:
    """Window offsets along one axis, as Captum places them.

    ``ceil((size - window) / stride) + 1`` windows at multiples of ``stride``; the last may
    stick out of the image and is clipped, so every pixel is covered at least once.
    """
    count = math.ceil((size - window) / stride) + 1
    return torch.arange(count) * stride


def _coverage(size: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """``(windows, size)`` boolean: which positions each window covers."""
    starts = window_starts(size, window, stride).to(device).view(-1, 1)
    positions = torch.arange(size, device=device).view(1, -1)
    return (positions >= starts) & (positions < starts + window)


@register("occlusion", family="perturbation", signed=True,
          reference="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
          summary="drop of the target score when a window around the pixel is occluded, "
                  "averaged over the windows covering it")
def occlusion(problem: Problem, *, window: int | tuple[int, int] = 16,
              stride: int | tuple[int, int] = 8, baseline: object = 0.0,
              batch_size: int = 64) -> torch.Tensor:
    """(y_c(x) - y_c(x occluded)) averaged over every window covering the pixel.

    A window of ``window`` pixels (all channels) is replaced by the baseline (a number, or
    a tensor broadcastable to x such as a blurred copy), slid by ``stride`` with windows
    placed as Captum's ``Occlusion`` places them (clipped at the far edge). This is
    Captum's definition with ``sliding_window_shapes=(C, h, w)``; we return one channel
    instead of C identical ones.

    Defaults: a 16 px window with stride 8 (27 x 27 = 729 passes per 224 px image); each
    pixel is covered by 4 windows in the interior. Larger windows see larger parts, smaller
    ones cost quadratically more. Cost: one forward plus ``N * windows`` forwards, batched
    (for EfficientNet-Lite0 at 224 px on a 2-core CPU about 0.13 s per window and image,
    so ~95 s per image with the defaults, or ~22 s with ``window=32, stride=16``).

    Returns:
        ``(N, 1, H, W)``: positive where occluding lowers the target's logit.
    """
    batch_size = check_batch_size(batch_size)
    x = problem.x
    n, _, height, width = x.shape
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    if wh > height or ww > width:
        raise MethodError(f"window {(wh, ww)} is larger than the input ({height}, {width})")
    for axis, w, s, size in (("height", wh, sh, height), ("width", ww, sw, width)):
        if s > w and w < size:
            raise MethodError(
                f"stride {s} is larger than the window {w} along the {axis}: some pixels would "
                "never be occluded; use stride <= window"
            )
    fill = make_baseline(baseline, x)
    rows = _coverage(height, wh, sh, x.device)
    cols = _coverage(width, ww, sw, x.device)
    positions = rows.shape[0] * cols.shape[0]
    total = torch.zeros(n, height, width, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        logits = problem.forward(x)
        indices = problem.indices(logits)
        clean = logits.gather(1, indices.view(-1, 1)).squeeze(1)
        for chunk in torch.arange(n * positions, device=x.device).split(batch_size):
            images, where = chunk // positions, chunk % positions
            masks = rows[where // cols.shape[0]][:, :, None] & cols[where % cols.shape[0]][:, None]
            occluded = torch.where(masks[:, None], fill[images], x[images])
            scores = problem.forward(occluded).gather(1, indices[images].view(-1, 1))
            drop = (clean[images] - scores.squeeze(1)).to(x.dtype)
            total.index_add_(0, images, drop.view(-1, 1, 1) * masks)
    count = rows.sum(0).view(-1, 1) * cols.sum(0).view(1, -1)
    return (total / count).unsqueeze(1)


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]
               ) -> torch.Tensor:
    """RISE masks from binary grids: bilinear upsampling, then a shifted crop.

    Args:
        grids: ``(B, s, s)`` binary grids.
        shifts: ``(B, 2)`` crop offsets (rows, columns), each below the cell size.
        size: The input's ``(H, W)``.

    Returns:
        ``(B, H, W)`` soft masks in [0, 1].
    """
    height, width = size
    s_h, s_w = grids.shape[-2:]
    cell_h, cell_w = math.ceil(height / s_h), math.ceil(width / s_w)
    up = F.interpolate(grids.unsqueeze(1), size=((s_h + 1) * cell_h, (s_w + 1) * cell_w),
                       mode="bilinear", align_corners=False).squeeze(1)
    rows = shifts[:, :1] + torch.arange(height, device=grids.device)
    cols = shifts[:, 1:] + torch.arange(width, device=grids.device)
    batch = torch.arange(grids.shape[0], device=grids.device).view(-1, 1, 1)
    return up[batch, rows[:, :, None], cols[:, None, :]]


@register("rise", family="perturbation", offset=True,
          needs_class_index="weighs masks by the class's softmax probability over all classes",
          reference="Petsiuk, Das, Saenko 2018, RISE: Randomized Input Sampling for "
                    "Explanation of Black-box Models",
          summary="average of random masks weighted by the class probability they leave")
def rise(problem: Problem, *, masks: int = 1000, mask_size: int = 7, p: float = 0.5,
         seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """S = sum_i P_c(x * M_i) M_i / (masks * p), with P_c the target's softmax probability.

    Masks as in the paper: a ``mask_size`` x ``mask_size`` grid of cells kept with
    probability ``p``, bilinearly upsampled to ``(mask_size + 1)`` cells of
    ``ceil(H / mask_size)`` pixels, cropped to ``H x W`` at a random offset below one cell
    (the authors' code uses the ceiling; the paper writes the floor). The upsampling is
    plain bilinear with edge cells extended; the authors' scikit-image call mirrors at the
    border instead, which fades the outer half cell towards its neighbour. Masked pixels become
    0 in the preprocessed space (the dataset's mean colour under the usual normalisation),
    as in the authors' code. The same masks are used for every image of the batch.

    Grids and offsets are drawn on the CPU from ``torch.Generator().manual_seed(seed)``,
    so a seed gives the same masks on every device and for every ``batch_size``.

    Default ``masks=1000``, a CPU compromise: the paper uses 4000 for ResNet50; sampling
    noise falls as ``1 / sqrt(masks)``. Cost: ``N * masks`` forwards, batched, i.e. about
    1000 x the per-image cost of a batched forward (for EfficientNet-Lite0 at 224 px on a
    2-core CPU, about 2 minutes per image; pass fewer ``masks`` for a quick look).

    Returns:
        ``(N, 1, H, W)``: non-negative saliency.
    """
    batch_size = check_batch_size(batch_size)
    for value, name in ((masks, "masks"), (mask_size, "mask_size")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MethodError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
        raise MethodError(f"p (the probability of keeping a cell) must be in (0, 1], got {p!r}")
    x = problem.x
    n, _, height, width = x.shape
    if mask_size > min(height, width):
        raise MethodError(f"mask_size {mask_size} exceeds the input's size ({height}, {width})")
    generator = torch.Generator().manual_seed(int(seed))
    grids = (torch.rand(masks, mask_size, mask_size, generator=generator) < p).to(x.dtype)
    shifts = torch.stack([
        torch.randint(0, math.ceil(size / mask_size), (masks,), generator=generator)
        for size in (height, width)
    ], dim=1)
    grids, shifts = grids.to(x.device), shifts.to(x.device)
    saliency = torch.zeros(n, height, width, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        indices = problem.indices()
        # Pairs (mask, image), mask-major: each chunk builds only the masks it uses.
        for chunk in torch.arange(masks * n, device=x.device).split(batch_size):
            ids, images = chunk // n, chunk % n
            first = int(ids[0])
            built = rise_masks(grids[first:int(ids[-1]) + 1], shifts[first:int(ids[-1]) + 1],
                               (height, width))
            chosen = built[ids - first]
            logits = problem.forward(x[images] * chosen.unsqueeze(1))
            probability = logits.softmax(dim=1).gather(1, indices[images].view(-1, 1))
            saliency.index_add_(0, images, probability.to(x.dtype).view(-1, 1, 1) * chosen)
    return (saliency / (masks * p)).unsqueeze(1)
