"""Readable views of attribution maps for pages: the map alone, a dimmed overlay, colour bars.

Pixel-level maps (saliency, integrated gradients, guided backprop, LRP...) are sparse: a
few thousand bright pixels. Blended over a colourful photo at the usual opacity they are
barely visible, so pages show them twice: the colourised map alone (no photo), and an
overlay on the photo greyed and dimmed, the colour at full opacity where the map is high.
Perturbation maps (occlusion, RISE) are smooth, layer maps (CAMs) are upsampled and smooth:
the ordinary overlay reads well for them.

Colour bars are HTML (a CSS gradient and tick labels), so a page of thousands of photos
needs no extra image per bar; their ticks are raw attribution values: 0 at the bottom of the
colour map, the method's scale (the raw value mapped to 1) at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convlens.attribution.registry import get_method
from convlens.errors import ConvlensError, InputShapeError
from convlens.files import ensure_folder, save_image_atomic
from convlens.preprocessing import coverage_mask
from convlens.present.figures import DEFAULT_CMAP, colorize

PIXEL_CMAP = "inferno"
"""Colour map of pixel-level views: black at 0, so weak pixels recede and strong ones glow
(jet's saturated blue at 0 makes a sparse map look like noise everywhere)."""

SMOOTH_INPUT_METHODS = ("occlusion", "rise")
"""Input-space methods whose maps are smooth: shown as ordinary overlays."""


def is_pixel_level(method: str) -> bool:
    """True for sparse, pixel-level maps (input space, except occlusion and RISE).

    Unknown names (a method registered elsewhere and since gone) count as not pixel-level:
    the page then shows the ordinary overlay only.
    """
    if method in SMOOTH_INPUT_METHODS:
        return False
    try:
        return get_method(method).pixel_space
    except ConvlensError:
        return False


def map_image(heatmap: np.ndarray, *, cmap: str = PIXEL_CMAP,
              seen: np.ndarray | None = None) -> Image.Image:
    """The colourised map alone (no photo); pixels the model never saw are mid-grey."""
    colours = colorize(heatmap, cmap)
    if seen is not None and not seen.all():
        colours = np.where(seen[..., None], colours, np.uint8(128))
    return Image.fromarray(colours)


def dimmed_overlay(image: Image.Image, heatmap: np.ndarray, *, cmap: str = PIXEL_CMAP,
                   dim: float = 0.45, seen: np.ndarray | None = None,
                   gain: float = 2.0) -> Image.Image:
    """The photo greyed and dimmed, the coloured map on top with opacity ``min(1, gain*heat)``.

    Where the map is at half its scale or more the colour is fully opaque, where it is 0 the
    dimmed grey photo shows: sparse pixel maps stand out and the photo stays recognisable.
    """
    if heatmap.shape != (image.height, image.width):
        raise InputShapeError(f"heatmap {heatmap.shape} does not match the image "
                              f"{(image.height, image.width)}; pass the map at the photo's size "
                              "(Explanation.heatmap returns it so)")
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    grey = photo.mean(axis=2, keepdims=True) * dim
    colours = colorize(heatmap, cmap).astype(np.float32)
    weight = np.clip(gain * heatmap[..., None], 0, 1)
    blended = (1 - weight) * grey + weight * colours
    if seen is not None and not seen.all():
        blended = np.where(seen[..., None], blended, grey * 0.5 + 96)
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


def save_readable_maps(explanation: Any, directory: str | Path, *, prefix: str | None = None
                       ) -> dict[str, dict[str, str]]:
    """Write the map alone and the dimmed overlay of each pixel-level method of an Explanation.

    Both use :data:`PIXEL_CMAP`; the page's colour bar for such a method uses it too.

    For the explain batch job: put the result in the record as ``"views"``;
    :func:`convlens.present.pages.write_explain_page` then shows these two images for the
    method instead of the ordinary overlay.

    Args:
        explanation: A :class:`convlens.explanations.Explanation`.
        directory: The output folder (the page's folder).
        prefix: File stem (default the explanation's name), as in ``Explanation.save``.

    Returns:
        ``{method: {"map": "NAME.METHOD.map.png", "overlay": "NAME.METHOD.dim.png"}}`` for
        the pixel-level methods only (file names relative to ``directory``).
    """
    directory = ensure_folder(directory)
    stem = prefix or explanation.name
    seen = coverage_mask(explanation.geometry)
    views: dict[str, dict[str, str]] = {}
    for method in explanation.methods:
        if not is_pixel_level(method):
            continue
        heat = explanation.heatmap(method)
        names = {"map": f"{stem}.{method}.map.png", "overlay": f"{stem}.{method}.dim.png"}
        save_image_atomic(map_image(heat, seen=seen), directory / names["map"])
        save_image_atomic(dimmed_overlay(explanation.image, heat, seen=seen),
                          directory / names["overlay"])
        views[method] = names
    return views


def colorbar(scale: float | None, *, sign: str = "positive", percentile: float = 100.0,
             cmap: str = DEFAULT_CMAP, normalize: str = "image", target: str | None = None,
             stops: int = 9) -> dict[str, Any]:
    """What a page needs to draw one colour bar of raw values.

    Args:
        scale: The raw value mapped to the top colour (``None`` or 0: an empty map).
        sign: The sign shown (``positive``: evidence for the target; ``negative``: against
            it; ``absolute``: magnitude; ``all``: both, centred on 0).
        percentile: 100 when the scale is the map's peak, e.g. 99.5 for pixel maps.
        cmap: The colour map of the images.
        normalize: ``image`` (each map its own scale) or ``batch`` (shared).
        target: The target class name, for the caption.
        stops: Colour stops of the CSS gradient.

    Returns:
        ``gradient`` (a CSS ``linear-gradient``), ``ticks`` (three labels, low to high),
        ``caption`` (what the colour means) and ``empty``.
    """
    colours = colorize(np.linspace(0, 1, stops)[None, :], cmap)[0]
    parts = [f"rgb({r},{g},{b}) {100 * i / (stops - 1):.0f}%"
             for i, (r, g, b) in enumerate(colours.tolist())]
    gradient = "linear-gradient(to right, " + ", ".join(parts) + ")"
    if not scale:
        return {"gradient": gradient, "ticks": [], "empty": True,
                "caption": "empty map (constant): nothing to show"}
    low = -scale if sign == "all" else 0.0
    ticks = [_tick(low), _tick((low + scale) / 2), _tick(scale)]
    what = {"positive": "evidence for", "negative": "evidence against",
            "absolute": "|evidence| for or against", "all": "evidence (+ for, - against)"}
    about = f" '{target}'" if target else " the target"
    caption = f"colour = raw value, {what.get(sign, sign)}{about}"
    if percentile < 100:
        caption += (f"; top colour at the {percentile:g}th percentile of |map|, "
                    "higher values saturate")
    if normalize == "batch":
        caption += "; scale shared by the batch"
    return {"gradient": gradient, "ticks": ticks, "empty": False, "caption": caption}


def _tick(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"
