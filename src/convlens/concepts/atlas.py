"""The concept atlas: a page of a layer's channels, each as the patches it stands for.

For each shown channel (the most relevant over the data first, or those asked for): its
top-k *relevance* patches (where the channel carried the most of the decision), its top-k
*activation* patches (where it fired the most), and for its top relevance images the
channel's conditional heatmap (the CRP map: the decision's relevance through this channel
alone) over the network's view, the relevance patch outlined. The reference set gives the
images and positions (:mod:`convlens.concepts.references`); boxes and maps are recomputed
here, one forward pass per image shown (:func:`convlens.concepts.patches.patch_boxes`),
and patches are cut from the full-size photos.

``OUT/atlas.html`` (Jinja2, ``present/templates/atlas.html.j2``) references PNGs written
under ``OUT/atlas/``; no scripts, images from the page's own folder only. See
docs/architecture.md, "Concepts".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.concepts.patches import crop_patch, patch_boxes
from convlens.concepts.references import MODES, ReferenceSetError, ReferenceSets, reference_sets
from convlens.files import claim_output, ensure_folder, save_image_atomic, write_text_atomic
from convlens.models.classifier import Classifier
from convlens.models.layers import list_layers, resolve_layer
from convlens.present.audit_figures import unit
from convlens.present.html import render_page
from convlens.present.views import dimmed_overlay
from convlens.progress import ProgressLike, emit, resolve_progress

PAGE = "atlas.html"
FOLDER = "atlas"
TEMPLATE = "atlas.html.j2"
CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
SIDE = 112
TOP_CHANNELS = 32
HEATMAPS = 4


def chosen_channels(sets: ReferenceSets, channels: Sequence[int] | None,
                    top_channels: int = TOP_CHANNELS) -> list[int]:
    """``channels`` checked against the layer, or the ``top_channels`` most relevant."""
    if channels is not None:
        return check_channels(channels, sets.layer, sets.channels)
    if isinstance(top_channels, bool) or not isinstance(top_channels, int) or top_channels < 1:
        raise ReferenceSetError(f"top_channels must be a positive integer, got {top_channels!r}")
    return sets.ranked_channels()[:top_channels]


def layer_channels(classifier: Classifier, layer: str | None) -> tuple[str, int]:
    """The layer's dotted name and channel count (one probing forward pass); refuses a layer
    without a spatial ``(C, h, w)`` output before any work."""
    name = resolve_layer(classifier.module, layer)[0] if layer is not None \
        else classifier.default_layer()
    shapes = {info.name: info.output_shape
              for info in list_layers(classifier.module, classifier.sample_shape,
                                      classifier.device)}
    shape = shapes.get(name)
    if shape is None or len(shape) != 3:
        raise ReferenceSetError(f"layer {name!r} outputs {shape if shape else 'no tensor'}; "
                             "reference sets need a spatial (C, h, w) output: choose a "
                             "convolutional layer (see `convlens layers`)")
    return name, int(shape[0])


def check_channels(channels: Sequence[int], layer: str, count: int) -> list[int]:
    """``channels`` if each exists on a ``count``-channel layer, else one clear error."""
    for channel in channels:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) \
                or not 0 <= channel < count:
            raise ReferenceSetError(
                f"channel {channel!r} does not exist: layer {layer!r} has {count} channels "
                f"(0..{count - 1}); CLI: --channels 0,5,9")
    return list(dict.fromkeys(int(c) for c in channels))


def _view(sets: ReferenceSets, x: torch.Tensor) -> Image.Image:
    """The network's input as a picture (normalisation undone)."""
    pixels = sets.classifier.preprocessing.unnormalize(x.detach().float().cpu())[0]
    array = (pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return Image.fromarray(array[..., :3])


def _fit(image: Image.Image, side: int = SIDE) -> Image.Image:
    """Scaled so the longer side is ``side`` (small patches grow, pixel-sharp)."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)


def _heat_picture(view: Image.Image, relevance: torch.Tensor, box: tuple[int, int, int, int]
                  ) -> Image.Image:
    """The positive conditional relevance (3x3 mean: LRP maps are pixel-sparse) over the
    dimmed view, the relevance patch outlined."""
    smooth = torch.nn.functional.avg_pool2d(relevance.float().cpu()[None, None], 3, stride=1,
                                            padding=1, count_include_pad=False)[0, 0]
    picture = dimmed_overlay(view, unit(smooth.numpy()))
    ImageDraw.Draw(picture).rectangle((box[0], box[1], box[2] - 1, box[3] - 1),
                                      outline=(255, 255, 255), width=1)
    return _fit(picture, SIDE)


def write_atlas(sets: ReferenceSets, out: str | os.PathLike[str] | None = None, *,
                channels: Sequence[int] | None = None, top_channels: int = TOP_CHANNELS,
                heatmaps: int = HEATMAPS, progress: ProgressLike = None) -> Path:
    """Draw ``OUT/atlas.html`` (default: the reference set's folder) and its pictures.

    Args:
        sets: A reference set with its classifier (:func:`convlens.reference_sets`).
        out: The output folder.
        channels: Channels to show, in that order; default the ``top_channels`` with the
            most relevance over the data.
        heatmaps: Conditional heatmaps per channel (of its top relevance images).
        progress: A callback given an ``atlas`` event per image drawn from, ``True`` or
            ``False``/None (see :func:`convlens.progress.resolve_progress`).

    Returns:
        The page's path.
    """
    if sets.classifier is None:
        raise ReferenceSetError("the atlas recomputes patches with the model: load the "
                             "reference set with its classifier")
    out = Path(out) if out is not None else sets.out
    if out is None:
        raise ReferenceSetError("give the atlas an output folder")
    progress = resolve_progress(progress)
    shown = chosen_channels(sets, channels, top_channels)
    requests: dict[int, list[tuple[int, tuple[int, int] | None, str, int]]] = {}
    for channel in shown:
        for mode in MODES:
            for rank, (image, _score, position) in enumerate(sets.entries(channel, mode)):
                requests.setdefault(image, []).append((channel, position, mode, rank))
                if mode == "relevance" and rank < heatmaps:
                    requests[image].append((channel, None, "heat", rank))
    cells: dict[tuple[int, str, int], dict[str, Any]] = {}
    height, width = sets.classifier.preprocessing.input_size
    with claim_output(out, what="convlens concepts atlas"):
        folder = ensure_folder(out / FOLDER)
        emit(progress, "atlas", 0, len(requests))
        for done, (image, asked) in enumerate(sorted(requests.items()), 1):
            x, geometry, photo = sets.load(image)
            patches = patch_boxes(sets.classifier, x, sets.layer,
                                  [(c, p, "relevance" if m == "heat" else m)
                                   for c, p, m, _r in asked],
                                  rule=sets.meta.get("rule_option", "auto"))
            boxes = {(c, m): patch.box for (c, _p, m, _r), patch in zip(asked, patches)
                     if m != "heat"}
            view = None
            for (channel, _position, mode, rank), patch in zip(asked, patches):
                name = f"c{channel:04d}-{mode}-{rank}.png"
                if mode == "heat":
                    view = view or _view(sets, x)
                    box = boxes.get((channel, "relevance"), patch.box)
                    picture = _heat_picture(view, patch.map, box)
                else:
                    picture = _fit(crop_patch(photo, geometry, patch.box, (height, width)))
                save_image_atomic(picture, folder / name)
                cells[(channel, mode, rank)] = {"src": f"{FOLDER}/{name}", "box": patch.box}
            emit(progress, "atlas", done, len(requests))
        context = _context(sets, shown, cells, heatmaps)

        page = write_text_atomic(out / PAGE, render_page(TEMPLATE, context))
    return page


def _context(sets: ReferenceSets, shown: list[int], cells: dict[tuple[int, str, int], Any],
             heatmaps: int) -> dict[str, Any]:
    ranked = {c: i for i, c in enumerate(sets.ranked_channels())}
    sections = []
    for channel in shown:
        rows = {}
        for mode in MODES:
            rows[mode] = [{**cells[(channel, mode, rank)], "score": f"{score:.3g}",
                           "path": sets.images[image]["path"],
                           "predicted": sets.images[image].get("predicted")}
                          for rank, (image, score, _p) in enumerate(sets.entries(channel, mode))]
        heat = [{**cells[(channel, "heat", rank)], "path": row["path"]}
                for rank, row in enumerate(rows["relevance"][:heatmaps])]
        sections.append({"channel": channel, "rank": ranked[channel] + 1,
                         "total": f"{float(sets.relevance_total[channel]):.3g}",
                         "relevance": rows["relevance"], "activation": rows["activation"],
                         "heat": heat})
    meta = sets.meta
    header = [("model", meta.get("model")), ("layer", sets.layer),
              ("channels", f"{len(shown)} shown of {sets.channels}"),
              ("images", f"{meta.get('count')} read from {meta.get('data')}"),
              ("k", sets.k), ("rule", sets.rule),
              ("relevance score", meta["scores"]["relevance"]),
              ("activation score", meta["scores"]["activation"])]
    return {"title": f"Concept atlas: {sets.layer}", "csp": CSP, "header": header,
            "channels": sections, "errors": meta.get("errors", [])}


def build_atlas(classifier: Classifier, data: str | os.PathLike[str], layer: str | None = None, *,
                k: int = 8, out: str | os.PathLike[str] = "convlens-atlas",
                channels: Sequence[int] | None = None, top_channels: int = TOP_CHANNELS,
                engine: Any = "local", engine_options: dict[str, Any] | None = None,
                batch_size: int = 32, workers: int = 0, overwrite: bool = False,
                progress: ProgressLike = None) -> tuple[ReferenceSets, Path]:
    """The concept atlas of ``layer`` over ``data`` in ``out``: what ``convlens concepts
    atlas`` does, as one call.

    The layer and ``channels`` are checked first (one probing forward), then the reference
    sets are computed in one resumable pass (:func:`~convlens.concepts.references.
    reference_sets`, ``OUT/references.json``) and the page is drawn (:func:`write_atlas`).

    Args:
        classifier: A Classifier.
        data: A folder of images (plain or ImageFolder) or a CSV.
        layer: The layer whose channels are the concepts (default: the model's default).
        k: Reference images per channel.
        out: The output folder (reference sets and page).
        channels, top_channels: As :func:`write_atlas`.
        engine, engine_options, batch_size, workers, overwrite: As
            :func:`~convlens.concepts.references.reference_sets`.
        progress: The pass's and the page's progress: a callback, ``True`` or ``False``/None
            (see :func:`convlens.progress.resolve_progress`).

    Returns:
        ``(reference sets, the page's path)``.

    Raises:
        ReferenceSetError: A layer without a spatial output, a channel it lacks, or what
            :func:`~convlens.concepts.references.reference_sets` refuses.
    """
    progress = resolve_progress(progress)
    name, count = layer_channels(classifier, layer)
    if channels is not None:
        channels = check_channels(channels, name, count)
    sets = reference_sets(classifier, data, name, k=k, out=out, engine=engine,
                          engine_options=engine_options, batch_size=batch_size,
                          workers=workers, overwrite=overwrite, progress=progress)
    page = write_atlas(sets, out, channels=channels, top_channels=top_channels,
                       progress=progress)
    return sets, page
