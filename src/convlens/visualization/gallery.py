"""The demo page's feature-visualization section: channels of three depths and a few classes.

Two ways to get the pictures:

* :func:`precomputed_gallery` (the default demo): a small set rendered once by
  ``scripts/make_demo_features.py`` with the settings in :data:`PRECOMPUTED`, committed as
  PNGs under ``convlens/data/demo_features/`` with ``features.json`` saying how each was made
  (objective, steps reached, settings, final objective value, the objective halfway, so
  convergence can be judged). A test re-renders one of them and compares.
* :func:`demo_gallery` (``convlens demo --full``): 6 channels each of an early
  (``blocks.2``), a middle (``blocks.8``) and a late (``blocks.14``) layer, and 6 ImageNet
  classes, rendered live. The patterns should grow from edges and colour gratings to
  textures to object parts with depth.

Convergence needs steps: at 32 steps a 128 px FFT-parameterised image is still grey noise,
at 256 it has settled (the recorded objective changes by a few percent over the last half).
The older demo gave each group a share of a 120 s time budget and silently stopped there,
which on a busy 2-core machine left 11-18 steps: grey noise. Now the live gallery runs every
step unless a budget is given, and every record says how many steps were reached.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.files import ensure_folder, save_image_atomic
from convlens.models.classifier import Classifier
from convlens.progress import ProgressLike, emit, resolve_progress
from convlens.visualization import objectives as obj
from convlens.visualization.inspection import file_stem, image_grid
from convlens.visualization.optimize import visualize

EARLY, MIDDLE, LATE = "blocks.2", "blocks.8", "blocks.14"
CHANNELS = {EARLY: [0, 3, 5, 8, 13, 21], MIDDLE: [0, 2, 4, 7, 11, 17],
            LATE: [0, 3, 5, 9, 14, 30]}
CLASSES = [1, 130, 281, 323, 980, 953]  # goldfish, flamingo, tabby, monarch, volcano, pineapple

# The committed set: (group title, objective shorthands), rendered one objective per
# visualize() call so that each image can be reproduced on its own.
PRECOMPUTED: list[tuple[str, list[str]]] = [
    (f"Channels of an early layer ({EARLY})", [f"{EARLY}:{k}" for k in (0, 3, 5)]),
    (f"Channels of a middle layer ({MIDDLE})", [f"{MIDDLE}:{k}" for k in (0, 2, 4)]),
    (f"Channels of a late layer ({LATE})", [f"{LATE}:{k}" for k in (0, 3, 5)]),
    ("Output classes", [f"class:{c}" for c in (130, 281, 980)]),
]
PRECOMPUTED_SETTINGS: dict[str, Any] = {"size": 128, "steps": 256, "seed": 0, "param": "fft",
                                        "transforms": "standard", "lr": None}
FEATURES_PACKAGE = "convlens.data"
FEATURES_FOLDER = "demo_features"
FEATURES_INDEX = "features.json"


def _groups() -> list[tuple[str, str, list[obj.Objective]]]:
    groups = []
    for depth, name in (("an early", EARLY), ("a middle", MIDDLE), ("a late", LATE)):
        goals = [obj.channel(name, k) for k in CHANNELS[name]]
        groups.append((f"Channels of {depth} layer ({name})", name, goals))
    groups.append(("Output classes", "classes", [obj.class_logit(c) for c in CLASSES]))
    return groups


def render_feature(classifier: Classifier, objective: str, *, size: int = 128, steps: int = 256,
                   seed: int = 0, param: str = "fft", transforms: str = "standard",
                   lr: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Render one objective alone and say how: the unit of the committed set.

    Args:
        classifier: The bundled model's Classifier.
        objective: A shorthand, ``"blocks.8:4"`` or ``"class:281"``.
        size, steps, seed, param, transforms, lr: As in :func:`visualize`.

    Returns:
        ``(PIL image, record)``; the record holds ``objective``, ``steps_requested``,
        ``steps_reached``, ``settings``, ``objective_final`` (the value at the last step),
        ``objective_half`` (at half the steps) and ``seconds``.
    """
    res = visualize(classifier, objective, size=size, steps=steps, seed=seed, param=param,
                    transforms=transforms, lr=lr, progress=False)
    trace = res.trace[:, 0]
    reached = int(trace.shape[0])
    record = {
        "objective": objective,
        "steps_requested": steps,
        "steps_reached": reached,
        "settings": {"size": size, "seed": seed, "param": param, "transforms": transforms,
                     "lr": lr, "optimizer": "Adam"},
        "objective_final": float(trace[-1]) if reached else None,
        "objective_half": float(trace[reached // 2]) if reached else None,
        "seconds": round(res.seconds, 2),
    }
    return res.pil()[0], record


def _features_dir() -> Path:
    return Path(str(resources.files(FEATURES_PACKAGE).joinpath(FEATURES_FOLDER)))


def precomputed_gallery(folder: Path | None = None) -> list[dict[str, Any]]:
    """The committed feature visualizations, in :func:`demo_gallery`'s record format.

    Args:
        folder: Where ``features.json`` and the PNGs are (default: the packaged set).

    Returns:
        One record per group (``title``, ``caption``, ``items``); each item has ``path``,
        ``caption``, ``title`` and ``how`` (the record written by :func:`render_feature`
        plus its ``file``).

    Raises:
        ConvlensError: The set is missing or incomplete (a broken installation).
    """
    folder = Path(folder) if folder is not None else _features_dir()
    index = folder / FEATURES_INDEX
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConvlensError(
            f"the precomputed feature visualizations could not be read from {index} ({error}); "
            "reinstall convlens, or regenerate them with scripts/make_demo_features.py"
        ) from None
    records = []
    for group in data["groups"]:
        items = []
        for how in group["items"]:
            path = folder / how["file"]
            if not path.is_file():
                raise ConvlensError(f"{path} is listed in {index} but missing; reinstall "
                                    "convlens or rerun scripts/make_demo_features.py")
            items.append({"title": how["objective"], "caption": how["caption"],
                          "path": str(path), "how": how})
        records.append({"title": group["title"], "caption": group.get("caption", ""),
                        "items": items})
    return records


def demo_gallery(classifier: Classifier, out_dir: str | Path, *,
                 budget_seconds: float | None = None,
                 size: int = 128, steps: int = 256, seed: int = 0,
                 progress: ProgressLike = None) -> list[dict[str, Any]]:
    """Render the full gallery live and write it as PNG files.

    Args:
        classifier: The bundled model's Classifier (layer names ``blocks.N``).
        out_dir: Folder for the PNGs (created).
        budget_seconds: Optional wall-time budget for all groups together (shared equally
            among the groups still to run; each stops early when its share is spent). The
            default, ``None``, runs every step: a budget on a slow machine yields
            unconverged grey images, and the records then say so.
        size: Image side in pixels.
        steps: Optimiser steps per group.
        seed: Seed of every run.
        progress: As for :func:`~convlens.visualization.optimize.visualize`; one ``features``
            event per group (``done``/``total`` in groups, the group now rendering named).

    Returns:
        One record per group: ``title``, ``caption``, ``path`` (the group's grid PNG),
        ``stopped_early`` and ``items``, one record per image with ``title``, ``caption``,
        ``path`` and ``how`` (objective, steps reached, settings, final objective value).
    """
    out = ensure_folder(out_dir)
    began = time.perf_counter()
    groups = _groups()
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    callback = resolve_progress(progress)
    for index, (title, key, goals) in enumerate(groups):
        emit(callback, "features", index, len(groups), title)
        share = None
        if budget_seconds is not None:
            left = budget_seconds - (time.perf_counter() - began)
            share = max(left, 0.0) / (len(groups) - index)
        res = visualize(classifier, goals, size=size, steps=steps, seed=seed,
                        time_limit=share, progress=False)
        captions = _captions(classifier, key, res.images, goals)
        done = len(res.trace)
        settings = {"size": size, "seed": seed, "param": "fft", "transforms": "standard",
                    "lr": None, "optimizer": "Adam", "batched_with": len(goals)}
        items = []
        for column, (image, goal, caption) in enumerate(zip(res.pil(), goals, captions)):
            path = save_image_atomic(image, out / f"{file_stem(goal.name, used)}.png")
            how = {"objective": goal.name, "steps_requested": steps, "steps_reached": done,
                   "settings": settings, "seconds": round(res.seconds, 2),
                   "objective_final": float(res.trace[-1, column]) if done else None,
                   "objective_half": float(res.trace[done // 2, column]) if done else None}
            items.append({"title": goal.name, "caption": caption, "path": str(path),
                          "how": how})
        grid_path = out / f"{file_stem(key + '_grid', used)}.png"
        save_image_atomic(res.grid(captions=False), grid_path)
        caption = f"{done} steps at {size} px in {res.seconds:.0f} s"
        if done < steps:
            caption += f" (stopped by the time budget after {done} of {steps} steps)"
        records.append({"title": title, "caption": caption, "path": str(grid_path),
                        "stopped_early": done < steps, "items": items})
    emit(callback, "features", len(groups), len(groups), "gallery rendered")
    return records


def _captions(classifier: Classifier, key: str, images: torch.Tensor, goals: list[obj.Objective]
              ) -> list[str]:
    """Channel numbers, or class names with the model's probability for its own picture."""
    if key != "classes":
        return [f"channel {goal.name.rsplit(':', 1)[1]}" for goal in goals]
    return class_captions(classifier, images, CLASSES)


def class_captions(classifier: Classifier, images: torch.Tensor, classes: list[int]) -> list[str]:
    """``"label (p=0.97)"``: the model's probability for the class it was rendered for."""
    pre = classifier.preprocessing
    mean = torch.tensor(pre.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    with torch.no_grad():
        probabilities = classifier.logits((images - mean) / std).softmax(dim=1)
    return [f"{classifier.label(c)} (p={float(probabilities[i, c]):.2f})"
            for i, c in enumerate(classes)]


def gallery_figure(records: list[dict[str, Any]], *, tile: int | None = None,
                   columns: int = 6) -> Any:
    """One picture of all groups: a title line above each group's captioned row of images.

    Used for the README's grid (``docs/images/feature_grid.png``).
    """
    from PIL import Image, ImageDraw, ImageFont


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
