"""From a raw attribution tensor to a 2-D map in [0, 1]: the presentation side.

Computation returns raw, signed, unnormalised tensors; every decision about how to show
them lives here: which sign is shown, and whether maps are scaled per image (each map uses
the full colour range) or per batch (maps of the same method share one scale, so a weak
explanation looks weak: per-image scaling alone hides magnitudes, a common complaint about
peer libraries).

How a method's raw output becomes a per-pixel map (channels reduced, offset removed) is not
a presentation choice but the method's own :meth:`convlens.attribution.registry.Method.to_map`,
shared with the audit and the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convlens.attribution.registry import upsample_maps
from convlens.errors import MethodError

SIGNS = ("positive", "negative", "absolute", "all")
NORMALIZATIONS = ("image", "batch")


def apply_sign(maps: torch.Tensor, sign: str) -> torch.Tensor:
    """Keep the evidence for the class (positive), against it, its magnitude, or all of it."""
    if sign == "positive":
        return maps.clamp_min(0)
    if sign == "negative":
        return (-maps).clamp_min(0)
    if sign == "absolute":
        return maps.abs()
    if sign == "all":
        return maps
    raise MethodError(f"unknown sign {sign!r}; valid: {', '.join(SIGNS)} (e.g. sign=\"positive\")")


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``(N, h, w)`` maps to ``size`` = (H, W), in float32 for display."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return upsample_maps(maps.float(), size)


def image_peaks(maps: torch.Tensor, percentile: float = 100.0) -> torch.Tensor:
    """Each map's own peak: the ``percentile``-th percentile of its |values|, shape ``(N,)``.

    This is the value each map's own scaling (``normalize="image"``) maps to 1. The shared
    scale of ``normalize="batch"`` is defined as **the maximum of these peaks** over every
    map of one method in the call (``image_peaks(...).max()``). Because a maximum of
    per-image values can be accumulated one batch at a time, the shared scale does not
    depend on how the images are batched: a streaming job keeps a running maximum per
    method and needs no map in memory twice.

    The percentile is by rank (the ``round(n * percentile / 100)``-th smallest |value|,
    at least the first); when that value is 0 (a sparse map), the maximum is used instead.

    Args:
        maps: ``(N, H, W)`` maps after channel reduction and sign (see
            :meth:`~convlens.attribution.registry.Method.to_map`, :func:`apply_sign`), or
            ``(H, W)`` for one map.
        percentile: In (0, 100]; :func:`display_percentile` gives the one presentation uses.

    Returns:
        A float ``(N,)`` tensor on the maps' device.
    """
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    flat = maps.abs().flatten(1)
    if percentile >= 100:
        return flat.amax(dim=1)
    rank = max(1, min(flat.shape[1], round(flat.shape[1] * percentile / 100)))
    peaks = flat.float().kthvalue(rank, dim=1).values
    return torch.where(peaks > 0, peaks, flat.amax(dim=1).float())


def scale_of(maps: torch.Tensor, normalize: str, percentile: float = 100.0) -> torch.Tensor:
    """The value mapped to 1 for each map: its own peak |value|, or the batch's.

    Pixel-space maps have a few extreme pixels that would make everything else invisible,
    so presentation uses a high percentile for them (Captum's visualiser clips outliers the
    same way); values above it saturate at 1. The batch's scale is the maximum of the
    per-map peaks (see :func:`image_peaks`).
    """
    peaks = image_peaks(maps, percentile)
    if normalize == "batch":
        peaks = peaks.max().expand_as(peaks)
    elif normalize != "image":
        raise MethodError(f"unknown normalisation {normalize!r}; "
                          f"valid: {', '.join(NORMALIZATIONS)}")
    return peaks


def to_unit(maps: torch.Tensor, scales: torch.Tensor, sign: str) -> torch.Tensor:
    """Divide by the scale, into [0, 1] (or [-1, 1] -> [0, 1] for ``sign="all"``).

    An all-zero map stays zero (never NaN): a zero scale is replaced by 1.
    """
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).view(-1, 1, 1)
    unit = maps / safe
    if sign == "all":
        unit = (unit + 1) / 2
    return unit.clamp(0, 1).nan_to_num(0.0)


def display_percentile(space: str) -> float:
    """Which percentile of |map| becomes 1: 99.5 for pixel maps (``input`` and ``concepts``
    spaces), the maximum for layer maps."""
    return 99.5 if space in ("input", "concepts") else 100.0


def is_empty(maps: torch.Tensor) -> torch.Tensor:
    """Per map: True when it carries no information (constant, e.g. all zero)."""
    flat = maps.flatten(1)
    return (flat.amax(dim=1) - flat.amin(dim=1)) <= 1e-12 * flat.abs().amax(dim=1).clamp_min(1)
