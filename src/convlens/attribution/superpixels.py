"""Feature groups for the coalition methods: superpixels or a grid, and maps over them.

Shapley sampling, KernelSHAP, LIME and feature ablation (``shapley.py``) switch whole groups
of pixels on and off. The groups come from :func:`segment`, which the methods call with
their own options, so a user who calls it with the same options gets exactly the segments a
map was computed on (to draw their outlines, or to read per-feature values back with
:func:`feature_values`).

What is segmented: ``attribute`` receives the preprocessed tensor, not the photo, so each
sample is min-max rescaled to [0, 1] *per channel* before scikit-image sees it. A per-channel
rescale undoes any per-channel affine normalisation with a positive scale (the usual
``(x - mean) / std``), so the segments are those of the photo's per-channel contrast stretch,
whatever normalisation the model uses. To segment the photo itself (e.g. at a different
size), compute labels yourself and pass them as ``segments=``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from convlens.errors import MethodError, unknown_choice

SEGMENTATIONS = ("slic", "quickshift", "grid")
DEFAULT_SEGMENTS = 50  # SLIC's target count: ~50 forwards per Shapley permutation
DEFAULT_GRID = 7       # 7 x 7 = 49 cells, comparable to 50 superpixels

# lime's image explainer segments with quickshift(kernel_size=4, max_dist=200, ratio=0.2)
QUICKSHIFT = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}


def _cells(grid: object, height: int, width: int) -> tuple[int, int]:
    cells = (grid, grid) if isinstance(grid, int) else grid
    if (not isinstance(cells, (tuple, list)) or len(cells) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in cells)):
        raise MethodError(f"grid must be a positive int or a pair (rows, columns) of them, "
                          f"got {grid!r}")
    if cells[0] > height or cells[1] > width:
        raise MethodError(f"grid {tuple(cells)} has more cells than the input has pixels "
                          f"({height}, {width})")
    return int(cells[0]), int(cells[1])


def grid_segments(height: int, width: int, grid: int | tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` labels of a ``rows x cols`` grid: pixel ``(r, c)`` is in cell
    ``(floor(r * rows / H), floor(c * cols / W))``, numbered row by row."""
    rows, cols = _cells(grid, height, width)
    row = torch.arange(height) * rows // height
    col = torch.arange(width) * cols // width
    return row.view(-1, 1) * cols + col.view(1, -1)


def _rescaled(sample: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, C)`` float64 in [0, 1], per channel (flat channels -> 0)."""
    image = sample.detach().to(device="cpu", dtype=torch.float64)
    low = image.amin(dim=(1, 2), keepdim=True)
    span = image.amax(dim=(1, 2), keepdim=True) - low
    image = torch.where(span > 0, (image - low) / span.clamp_min(1e-300), 0.0)
    return image.permute(1, 2, 0).numpy()


def _skimage_labels(image: np.ndarray, segmentation: str, n_segments: int) -> np.ndarray:
    from skimage.segmentation import quickshift, slic  # slow to import: only when used

    colour = image.shape[2] == 3
    if segmentation == "slic":
        if image.shape[2] == 1:
            return slic(image[:, :, 0], n_segments=n_segments, start_label=0, channel_axis=None)
        return slic(image, n_segments=n_segments, start_label=0, channel_axis=-1)
    return quickshift(image, convert2lab=colour, **QUICKSHIFT)


def _consecutive(labels: torch.Tensor) -> torch.Tensor:
    """Relabel each sample's ``(H, W)`` labels to 0..K-1 (in sorted label order)."""
    return torch.stack([torch.unique(one, return_inverse=True)[1] for one in labels])


def segment(x: torch.Tensor, segmentation: str = "slic", n_segments: int | None = None,
            grid: int | tuple[int, int] | None = None) -> torch.Tensor:
    """The feature groups the coalition methods use on ``x``, one label map per sample.

    Args:
        x: Preprocessed float batch ``(N, C, H, W)`` (the tensor given to ``attribute``).
        segmentation: ``"slic"`` (Achanta et al. 2012, scikit-image's ``slic`` with
            ``compactness=10``, in Lab space for 3 channels), ``"quickshift"`` (Vedaldi &
            Soatto 2008, with the parameters of the ``lime`` package's image explainer:
            ``kernel_size=4, max_dist=200, ratio=0.2``) or ``"grid"`` (equal rectangles).
        n_segments: SLIC's target number of superpixels (default 50; SLIC may return a few
            more or fewer). Quickshift has no target count and refuses it.
        grid: For ``"grid"``: cells per side, an int or ``(rows, columns)`` (default 7).

    Returns:
        ``(N, H, W)`` int64 labels on ``x``'s device, numbered 0..K_i-1 in each sample
        (K_i may differ between samples). Deterministic: the same call gives the same labels.

    Raises:
        MethodError: An unknown segmentation, or an option it does not use.
    """
    if segmentation not in SEGMENTATIONS:
        raise MethodError(unknown_choice("segmentation", segmentation, SEGMENTATIONS))
    if x.dim() != 4:
        raise MethodError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, _, height, width = x.shape
    if segmentation == "grid":
        if n_segments is not None:
            raise MethodError("n_segments steers SLIC only; for segmentation='grid' set grid= "
                              "(cells per side)")
        cells = grid_segments(height, width, DEFAULT_GRID if grid is None else grid)
        return cells.expand(n, height, width).clone().to(x.device)
    if grid is not None:
        raise MethodError(f"grid= is for segmentation='grid', not {segmentation!r}")
    if segmentation == "quickshift" and n_segments is not None:
        raise MethodError("quickshift has no target number of segments (it finds its own); "
                          "use segmentation='slic' with n_segments=, or pass segments=")
    count = DEFAULT_SEGMENTS if n_segments is None else n_segments
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise MethodError(f"n_segments must be a positive integer, got {n_segments!r}")
    labels = [torch.from_numpy(np.ascontiguousarray(
        _skimage_labels(_rescaled(sample), segmentation, count)).astype(np.int64))
        for sample in x]
    return _consecutive(torch.stack(labels)).to(x.device)


def resolve_segments(x: torch.Tensor, segments: Any, segmentation: str,
                     n_segments: int | None, grid: int | tuple[int, int] | None
                     ) -> torch.Tensor:
    """The methods' labels: the user's ``segments=`` (checked, renumbered) or :func:`segment`."""
    if segments is None:
        return segment(x, segmentation, n_segments, grid)
    if n_segments is not None or grid is not None:
        raise MethodError("segments= gives the feature groups; n_segments= and grid= would be "
                          "ignored, so drop them")
    n, _, height, width = x.shape
    if isinstance(segments, np.ndarray):
        segments = torch.from_numpy(segments)
    if not isinstance(segments, torch.Tensor):
        raise MethodError(f"segments must be an integer tensor (N, H, W) or (H, W) of labels, "
                          f"got {type(segments).__name__}")
    if segments.dtype == torch.bool or segments.is_floating_point() or segments.is_complex():
        raise MethodError(f"segments must hold integer labels, got {segments.dtype}; "
                          "use segments.long()")
    if segments.shape not in ((height, width), (n, height, width)):
        raise MethodError(f"segments must have shape ({n}, {height}, {width}) or "
                          f"({height}, {width}) to match the input, got {tuple(segments.shape)}")
    labels = segments.detach().to("cpu", torch.int64).expand(n, height, width)
    return _consecutive(labels).to(x.device)


def segment_sizes(segments: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` pixel count of each label (K = the largest count of labels; 0 = absent)."""
    n = segments.shape[0]
    flat = segments.reshape(n, -1)
    features = int(flat.max()) + 1
    sizes = torch.zeros(n, features, dtype=torch.int64, device=segments.device)
    return sizes.scatter_add_(1, flat, torch.ones_like(flat))


def spread(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` feature values -> ``(N, 1, H, W)``: each pixel gets its feature's value
    divided by the feature's pixel count, so a map sums to the sum of its feature values."""
    sizes = segment_sizes(segments).to(values.dtype).clamp_min(1)
    per_pixel = values / sizes
    n = segments.shape[0]
    return per_pixel.gather(1, segments.reshape(n, -1)).view(n, 1, *segments.shape[1:])


def feature_values(attribution: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """The per-feature values behind a coalition map: its sum over each segment.

    Args:
        attribution: ``(N, 1, H, W)`` map from ``shapley_sampling``, ``kernel_shap``,
            ``lime`` or ``feature_ablation``.
        segments: The ``(N, H, W)`` labels it was computed on (from :func:`segment`).

    Returns:
        ``(N, K)``: value of feature k of sample i (0 for labels a sample does not have).
    """
    if attribution.dim() != 4 or attribution.shape[1] != 1 or (
            attribution.shape[0:1] + attribution.shape[2:] != segments.shape):
        raise MethodError(f"attribution {tuple(attribution.shape)} and segments "
                          f"{tuple(segments.shape)} must be (N, 1, H, W) and (N, H, W)")
    n = segments.shape[0]
    flat = segments.reshape(n, -1).to(attribution.device)
    out = torch.zeros(n, int(flat.max()) + 1, dtype=attribution.dtype, device=attribution.device)
    return out.scatter_add_(1, flat, attribution.reshape(n, -1))
