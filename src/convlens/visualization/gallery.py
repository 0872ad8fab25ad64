"""The demo page's feature-visualization section: channels of three depths and a few classes.

:func:`demo_gallery` renders, with the bundled model or any Classifier whose layers it
names:

* 6 channels each of an early (``blocks.2``), a middle (``blocks.8``) and a late
  (``blocks.14``) layer: the patterns should grow from edges and colour gratings to
  textures to object parts with depth;
* 6 ImageNet classes (goldfish, flamingo, tabby, monarch, volcano, pineapple).

It is sized for a demo, not for a paper: 128 px images and at most 128 steps per group.
Measured on the 2-core development machine (shared, busy): 96 steps of all four groups
took 44 s with one torch thread, so 128 steps take about a minute; the full-quality
settings (224 px, 256 steps) take 1-3 minutes per group there. Each group also gets a
share of ``budget_seconds`` (default 120) and stops early when its share is spent
(``visualize(time_limit=)``), so a slow machine gets softer, lower-contrast pictures
rather than a slow page: with two threads on that busy machine (OpenMP threads thrash
when other processes hold the cores) the groups got 11-18 steps in their 30 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from convlens.visualization import objectives as obj
from convlens.visualization.inspection import file_stem
from convlens.visualization.optimize import visualize

EARLY, MIDDLE, LATE = "blocks.2", "blocks.8", "blocks.14"
CHANNELS = {EARLY: [0, 3, 5, 8, 13, 21], MIDDLE: [0, 2, 4, 7, 11, 17],
            LATE: [0, 3, 5, 9, 14, 30]}
CLASSES = [1, 130, 281, 323, 980, 953]  # goldfish, flamingo, tabby, monarch, volcano, pineapple


def _groups() -> list[tuple[str, str, list[obj.Objective]]]:
    groups = []
    for depth, name in (("an early", EARLY), ("a middle", MIDDLE), ("a late", LATE)):
        goals = [obj.channel(name, k) for k in CHANNELS[name]]
        groups.append((f"Channels of {depth} layer ({name})", name, goals))
    groups.append(("Output classes", "classes", [obj.class_logit(c) for c in CLASSES]))
    return groups


def demo_gallery(classifier: Any, out_dir: str | Path, *, budget_seconds: float = 120.0,
                 size: int = 128, steps: int = 128, seed: int = 0) -> list[dict[str, Any]]:
    """Render the demo's feature visualizations and write them as PNG files.

    Args:
        classifier: The bundled model's Classifier (layer names ``blocks.N``).
        out_dir: Folder for the PNGs (created).
        budget_seconds: Wall-time budget for all groups together (shared equally among
            the groups still to run; each stops early when its share is spent).
        size: Image side in pixels.
        steps: Optimiser steps per group at most.
        seed: Seed of every run.

    Returns:
        One record per group: ``title``, ``caption``, ``path`` (the group's grid PNG) and
        ``items``, one record per image with ``title``, ``caption`` and ``path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    groups = _groups()
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    for index, (title, key, goals) in enumerate(groups):
        left = budget_seconds - (time.perf_counter() - began)
        share = max(left, 0.0) / (len(groups) - index)
        res = visualize(classifier, goals, size=size, steps=steps, seed=seed,
                        time_limit=share, progress=False)
        captions = _captions(classifier, key, res.images, goals)
        items = []
        for image, goal, caption in zip(res.pil(), goals, captions):
            path = out / f"{file_stem(goal.name, used)}.png"
            image.save(path)
            items.append({"title": goal.name, "caption": caption, "path": str(path)})
        grid_path = out / f"{file_stem(key + '_grid', used)}.png"
        res.grid(captions=False).save(grid_path)
        done = len(res.trace)
        records.append({
            "title": title,
            "caption": f"{done} steps at {size} px in {res.seconds:.0f} s",
            "path": str(grid_path),
            "items": items,
        })
    return records


def _captions(classifier: Any, key: str, images: torch.Tensor, goals: list[obj.Objective]
              ) -> list[str]:
    """Channel numbers, or class names with the model's probability for its own picture."""
    if key != "classes":
        return [f"channel {goal.name.rsplit(':', 1)[1]}" for goal in goals]
    pre = classifier.preprocessing
    mean = torch.tensor(pre.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    probabilities = classifier.logits((images - mean) / std).softmax(dim=1)
    return [f"{classifier.label(c)} (p={float(probabilities[i, c]):.2f})"
            for i, c in enumerate(CLASSES)]


def gallery_figure(records: list[dict[str, Any]], *, tile: int | None = None,
                   columns: int = 6) -> Any:
    """One picture of all groups: a title line above each group's captioned row of images.

    Used for the README's grid (``docs/images/feature_grid.png``).
    """
    from PIL import Image, ImageDraw, ImageFont

    from convlens.visualization.inspection import image_grid

    font = ImageFont.load_default()
    rows = []
    for record in records:
        images = [Image.open(item["path"]).convert("RGB") for item in record["items"]]
        captions = [item["caption"] for item in record["items"]]
        grid = image_grid(images, columns=columns, captions=captions, tile=tile)
        title = Image.new("RGB", (grid.width, 18), (255, 255, 255))
        ImageDraw.Draw(title).text((4, 3), record["title"], fill=(0, 0, 0), font=font)
        rows += [title, grid]
    width = max(row.width for row in rows)
    canvas = Image.new("RGB", (width, sum(row.height for row in rows)), (255, 255, 255))
    top = 0
    for row in rows:
        canvas.paste(row, (0, top))
        top += row.height
    return canvas
