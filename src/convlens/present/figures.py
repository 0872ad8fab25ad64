"""Pictures: colour overlays on photos and titled side-by-side grids with colour bars.

Everything here takes numpy maps in [0, 1] at the photo's size and PIL images; nothing
here touches autograd or the model.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

from convlens.errors import InputShapeError, MethodError  # noqa: E402

DEFAULT_CMAP = "jet"


def colorize(heatmap: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 colours."""
    try:
        colormap = colormaps[cmap]
    except KeyError:
        raise MethodError(f"unknown colormap {cmap!r}; use a matplotlib colormap name, e.g. "
                          "jet, inferno, viridis, magma") from None
    rgba = colormap(np.clip(heatmap, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, *, cmap: str = DEFAULT_CMAP,
            alpha: float = 0.5, seen: np.ndarray | None = None) -> Image.Image:
    """Blend a coloured heatmap over the photo.

    The colour's weight grows with the heat (from ``alpha / 3`` at 0 to ``alpha * 1.4`` at
    1), so the photo stays readable where nothing happens and sparse pixel maps stay
    visible. Pixels outside ``seen`` (cropped away by preprocessing: the model never saw
    them) are shown greyed out, without colour.
    """
    if heatmap.shape != (image.height, image.width):
        raise InputShapeError(f"heatmap {heatmap.shape} does not match the image "
                              f"{(image.height, image.width)}; pass the map at the photo's "
                              "size (Explanation.heatmap returns it so)")
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = colorize(heatmap, cmap).astype(np.float32)
    weight = np.clip(alpha * (1 / 3 + heatmap[..., None] * (1.4 - 1 / 3)), 0, 1)
    blended = (1 - weight) * photo + weight * colours
    if seen is not None and not seen.all():
        grey = photo.mean(axis=2, keepdims=True) * 0.5 + 96
        blended = np.where(seen[..., None], blended, grey)
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


def grid_figure(image: Image.Image, panels: Sequence[tuple[str, np.ndarray, float]], *,
                title: str = "", cmap: str = DEFAULT_CMAP, alpha: float = 0.5,
                panel_inches: float = 3.0) -> plt.Figure:
    """Original photo, then one overlay per method, each with a colour bar.

    Args:
        image: The photo as displayed.
        panels: ``(caption, heatmap in [0, 1], scale)`` per method; ``scale`` is the raw
            attribution value that maps to 1, shown on the colour bar so magnitudes can be
            compared across images.
        title: Figure title (target class and probability).
    """
    count = 1 + len(panels)
    fig, axes = plt.subplots(1, count, figsize=(panel_inches * count, panel_inches * 1.15),
                             squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, (caption, heatmap, scale) in zip(axes[1:], panels):
        ax.imshow(overlay(image, heatmap, cmap=cmap, alpha=alpha))
        mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, scale or 1.0))
        bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.formatter.set_powerlimits((-2, 3))
        ax.set_title(caption, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def panel_grid_figure(image: Image.Image,
                      rows: Sequence[Sequence[tuple[str, np.ndarray, float]]], *,
                      title: str = "", cmap: str = DEFAULT_CMAP, alpha: float = 0.5,
                      panel_inches: float = 3.0) -> plt.Figure:
    """The photo, then a matrix of overlays: e.g. one row per method, one column per class.

    Args:
        image: The photo as displayed (shown once, top left).
        rows: Per row, ``(caption, heatmap in [0, 1], scale)`` per column, as in
            :func:`grid_figure`; rows may differ in length.
        title: Figure title.
    """
    columns = 1 + max((len(row) for row in rows), default=0)
    fig, axes = plt.subplots(len(rows) or 1, columns, squeeze=False,
                             figsize=(panel_inches * columns, panel_inches * 1.15 * len(rows)))
    axes[0][0].imshow(image)
    axes[0][0].set_title("input", fontsize=9)
    for r, row in enumerate(rows):
        for ax, (caption, heatmap, scale) in zip(axes[r][1:], row):
            ax.imshow(overlay(image, heatmap, cmap=cmap, alpha=alpha))
            mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, scale or 1.0))
            bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            bar.formatter.set_powerlimits((-2, 3))
            ax.set_title(caption, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_image(fig: plt.Figure, dpi: int = 100) -> Image.Image:
    """Render a matplotlib figure to a PIL image and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image
