"""Figures of the audit report: confusion matrix, eigenvalue spectrum, prototypes, thumbnails.

Pure drawing: numpy arrays and PIL images in, PNG/JPEG files out (written atomically);
no model, no autograd (docs/architecture.md, "Layers and the direction data flows").
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from convlens.files import write_bytes_atomic
from convlens.present.figures import colorize, figure_to_image, overlay

THUMB = 112


def _save(image: Image.Image, path: Path, fmt: str = "JPEG") -> Path:
    buffer = io.BytesIO()
    options = {"quality": 85} if fmt == "JPEG" else {}
    image.convert("RGB").save(buffer, format=fmt, **options)
    return write_bytes_atomic(path, buffer.getvalue())


def thumbnail(image: Image.Image, path: Path, side: int = THUMB) -> Path:
    """A JPEG thumbnail (longest side ``side``)."""
    small = image.convert("RGB").copy()
    small.thumbnail((side, side))
    return _save(small, path)


def unit(heat: np.ndarray) -> np.ndarray:
    """A non-negative map scaled to [0, 1] by its peak (all-zero stays zero)."""
    heat = np.maximum(np.asarray(heat, dtype=np.float64), 0.0)
    peak = heat.max() if heat.size else 0.0
    return heat / peak if peak > 0 else heat


def overlay_thumbnail(view: Image.Image, heat: np.ndarray, path: Path, side: int = THUMB
                      ) -> Path:
    """The network's view of a photo with its map (same size as ``view``) blended over it."""
    return thumbnail(overlay(view, unit(heat)), path, side)


def prototype(photos: Sequence[Image.Image], heat: np.ndarray, path: Path, *,
              columns: int = 4, side: int = 64) -> Path:
    """A cluster's prototype: its mean map, large, next to a grid of members' photos with
    the same mean map laid over each (where the cluster looks, on what it looks at)."""
    count = max(1, len(photos))
    rows = int(np.ceil(count / columns))
    grid = Image.new("RGB", (columns * side, rows * side), (240, 240, 240))
    cell = np.asarray(Image.fromarray((unit(heat) * 255).astype(np.uint8)).resize(
        (side, side), Image.BILINEAR), dtype=np.float64) / 255.0
    for k, photo in enumerate(photos):
        small = overlay(photo.convert("RGB").resize((side, side)), cell, alpha=0.45)
        grid.paste(small, ((k % columns) * side, (k // columns) * side))
    colours = Image.fromarray(colorize(unit(heat))).resize((rows * side, rows * side),
                                                           Image.BILINEAR)
    canvas = Image.new("RGB", (grid.width + colours.width + 8, grid.height), (255, 255, 255))
    canvas.paste(colours, (0, 0))
    canvas.paste(grid, (colours.width + 8, 0))
    return _save(canvas, path, "PNG")


def patch_grid(patches: Sequence[Image.Image], path: Path, *, side: int = 64,
               gap: int = 4) -> Path:
    """A concept's reference patches in one row (each scaled to ``side``), as a PNG."""
    count = max(1, len(patches))
    canvas = Image.new("RGB", (count * side + (count - 1) * gap, side), (255, 255, 255))
    for k, patch in enumerate(patches):
        canvas.paste(patch.convert("RGB").resize((side, side), Image.BILINEAR),
                     (k * (side + gap), 0))
    return _save(canvas, path, "PNG")


def confusion_figure(names: Sequence[str], matrix: Sequence[Sequence[int]], path: Path,
                     limit: int = 40) -> Path:
    """The confusion matrix (rows: label, columns: prediction) as a PNG.

    With more than ``limit`` classes only the ``limit`` with the most images are drawn.
    """
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.int64).reshape(len(names), len(names))
    keep = np.arange(len(names))
    if len(names) > limit:
        keep = np.sort(np.argsort(-(counts.sum(0) + counts.sum(1)))[:limit])
    counts = counts[np.ix_(keep, keep)]
    shown = [names[i] for i in keep]
    size = 2.5 + 0.32 * len(shown)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=8)
    ax.set_yticks(range(len(shown)), shown, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    if len(shown) <= 15:
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > counts.max() / 2 else "black")
    return _save(figure_to_image(fig), path, "PNG")


def eigenvalue_figure(eigenvalues: Sequence[float], n_clusters: int, path: Path) -> Path:
    """The smallest Laplacian eigenvalues with the chosen number of clusters marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.0))
    values = np.asarray(eigenvalues, dtype=np.float64)
    ax.plot(np.arange(1, len(values) + 1), values, "o-", markersize=3)
    if n_clusters >= 1 and len(values):
        ax.axvline(n_clusters + 0.5, color="#c33", lw=1)
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel("eigenvalue", fontsize=8)
    ax.tick_params(labelsize=7)
    return _save(figure_to_image(fig), path, "PNG")


def before_after_figure(rows: Sequence[tuple[str, float, Sequence[float], float,
                                             Sequence[float]]], path: Path, *,
                        title: str = "") -> Path:
    """Grouped bars of a rate before and after a change, with their intervals, as a PNG.

    Args:
        rows: Per bar pair ``(caption, before, (low, high), after, (low, high))``, rates in
            [0, 1] (e.g. the correction's artefact test, docs/architecture.md "Correction").
        path: Where the PNG goes.
        title: Above the bars.
    """
    import matplotlib.pyplot as plt

    count = max(1, len(rows))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * count, 2.6))
    at = np.arange(len(rows), dtype=np.float64)
    for offset, (which, colour, rate, band) in enumerate((("before", "#c55", 1, 2),
                                                          ("after", "#4a7", 3, 4))):
        values = np.array([r[rate] for r in rows], dtype=np.float64)
        bands = np.array([r[band] for r in rows], dtype=np.float64).reshape(-1, 2)
        errors = np.clip(np.stack([values - bands[:, 0], bands[:, 1] - values]), 0, None)
        ax.bar(at + (offset - 0.5) * 0.38, values, 0.38, yerr=errors, capsize=2,
               color=colour, label=which, error_kw={"elinewidth": 0.8})
        for x, value, top in zip(at + (offset - 0.5) * 0.38, values, bands[:, 1]):
            ax.text(x, max(value, top) + 0.02, f"{value:.2f}", ha="center", fontsize=6)
    ax.set_xticks(at, [r[0] for r in rows], fontsize=7)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of images", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    if title:
        ax.set_title(title, fontsize=9)
    return _save(figure_to_image(fig), path, "PNG")
