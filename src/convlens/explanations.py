"""``explain``: photos in, Explanation objects out (attribution plus presentation).

:func:`iter_explain` works through the photos in batches of at most ``batch_size``
(image x target) rows: it decodes and preprocesses one batch of photos, predicts, resolves
the targets (the prediction, given classes, class names, a score function, or the top k
classes), runs every requested method in one
:func:`~convlens.attribution.core.attribute` call per batch (so gradient CAMs share their
pass) and yields the raw results wrapped with what is needed to show them over the photo.
Memory is bounded by the batch size, whatever the number of photos or targets: nothing of
a batch but the yielded Explanations survives it, and an Explanation of a photo read from
a file keeps the path, not the decoded pixels (see :attr:`Explanation.image`).
:func:`explain` is its list form, which can also share one scale across the call
(``normalize="batch"``, defined in :func:`convlens.present.heatmap.image_peaks`).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.attribution.core import Method, attribute, get_method
from convlens.attribution.targets import (
    is_score_function,
    resolve_targets,
    score_logits,
    score_name,
)
from convlens.errors import ConvlensWarning, MethodError, TargetError
from convlens.files import ensure_folder, save_image_atomic
from convlens.io.images import load_image
from convlens.models.classifier import Classifier, ImageLike, ModelLike, Prepared, as_classifier
from convlens.models.layers import resolve_layer
from convlens.preprocessing import Geometry, coverage_mask, map_to_original
from convlens.present import figures
from convlens.present.heatmap import (
    NORMALIZATIONS,
    SIGNS,
    apply_sign,
    display_percentile,
    image_peaks,
    is_empty,
    to_unit,
)
from convlens.progress import ProgressCallback, ProgressLike, emit, resolve_progress

#: Longest side of the photo that overlays and grids are drawn on (heatmaps themselves
#: are returned at the photo's own size).
DISPLAY_SIDE = 1024
#: Photos with a side below this many pixels get a note: upsampled to the network's input,
#: they carry (almost) no content to explain.
TINY_SIDE = 8


@dataclass
class Explanation:
    """One image, one target, one or more attribution maps.

    Attributes:
        photo: The photo as displayed when it was given in memory (PIL image or array);
            ``None`` when it came from a file, which is then decoded on demand from
            ``source`` (so a list of thousands of Explanations holds no decoded photos).
            Read it through :attr:`image`.
        name: A short name for files and titles.
        geometry: Where the network's input lies in the photo (original pixel size).
        target: The explained class index (-1 for a score-function target);
            ``target_label`` its name (the function's name for a score function).
        probability: The model's softmax probability for the target (NaN for a score
            function or a model whose output is not ``(N, classes)``).
        predictions: The model's top classes ``[(label, probability), ...]`` (empty when
            the output is not ``(N, classes)``).
        attributions: Raw attribution per method, on the CPU: ``(C, H, W)`` for
            input-space methods, ``(1, h, w)`` for layer-space methods.
        layer: The layer used by layer-space methods, if any.
        scales: The raw value that maps to 1 per method (the image's own peak, or the
            call's shared scale when ``normalize="batch"``).
        sign: Which sign of signed maps is shown (``positive`` = evidence for the class).
        source: The file the photo was read from, if any.
        peaks: Per method, this map's own peak (:func:`~convlens.present.heatmap.image_peaks`):
            a streaming job's shared scale is the running maximum of these.
        score: The explained score on the unperturbed photo (the target's logit, or the
            score function's value).
        notes: Human-readable warnings about this result (a 1x1 photo, an all-zero map...),
            also emitted as :class:`~convlens.errors.ConvlensWarning`.
    """

    photo: Image.Image | None
    name: str
    geometry: Geometry
    target: int
    target_label: str
    probability: float
    predictions: list[tuple[str, float]]
    attributions: dict[str, torch.Tensor]
    layer: str | None = None
    scales: dict[str, float] = field(default_factory=dict)
    sign: str = "positive"
    source: Path | None = None
    peaks: dict[str, float] = field(default_factory=dict)
    score: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        """The photo as displayed (EXIF orientation applied, RGB) at its original size.

        Decoded from :attr:`source` at each access when the photo came from a file: keep
        the result if you need it several times.
        """
        if self.photo is not None:
            return self.photo
        if self.source is None:
            raise ValueError("this explanation has neither a photo nor a source file")
        return load_image(self.source)

    def display_image(self, max_side: int = DISPLAY_SIDE) -> Image.Image:
        """The photo scaled down (never up) so that its longest side is ``max_side``."""
        image = self.image
        factor = max_side / max(image.size)
        if factor >= 1:
            return image
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, Image.Resampling.BILINEAR)

    @property
    def methods(self) -> list[str]:
        return list(self.attributions)

    def _method(self, method: str | None) -> str:
        if method is None:
            return self.methods[0]
        if method not in self.attributions:
            raise KeyError(f"no {method!r} map in this explanation; it has {self.methods}")
        return method

    def raw_map(self, method: str | None = None, *, sign: str | None = None) -> torch.Tensor:
        """The 2-D map before scaling: channels reduced, sign applied, model resolution."""
        name = self._method(method)
        return _shown_maps(self.attributions[name], get_method(name), sign or self.sign)[0]

    def heatmap(self, method: str | None = None, *, sign: str | None = None,
                scale: float | None = None, size: tuple[int, int] | None = None
                ) -> np.ndarray:
        """``(height, width)`` float32 map in [0, 1] at the original photo's size.

        Args:
            method: Which map (default: the first).
            sign: ``positive`` (default), ``negative``, ``absolute`` or ``all``.
            scale: Raw value mapped to 1; default the explanation's (per image or batch).
            size: ``(width, height)`` to draw it at instead (e.g. a display copy's size);
                the photo's aspect ratio is assumed.
        """
        name = self._method(method)
        raw = self.raw_map(name, sign=sign)
        if scale is None:
            scale = self._scale(name, raw)
        unit = to_unit(raw[None], torch.tensor([float(scale)]), sign or self.sign)[0]
        return map_to_original(unit, self._geometry_at(size))

    def _geometry_at(self, size: tuple[int, int] | None) -> Geometry:
        if size is None or tuple(size) == tuple(self.geometry.original_size):
            return self.geometry
        fx = size[0] / self.geometry.original_size[0]
        fy = size[1] / self.geometry.original_size[1]
        left, top, right, bottom = self.geometry.box
        return Geometry(tuple(size), (left * fx, top * fy, right * fx, bottom * fy))

    def _scale(self, name: str, raw: torch.Tensor) -> float:
        if self.scales.get(name):
            return self.scales[name]
        percentile = display_percentile(get_method(name).space)
        return float(image_peaks(raw[None], percentile)[0])

    def empty(self, method: str | None = None) -> bool:
        """True when the map is constant (for example all zero): nothing to show."""
        return bool(is_empty(self.raw_map(method)[None])[0])

    def overlay(self, method: str | None = None, *, cmap: str = figures.DEFAULT_CMAP,
                alpha: float = 0.5) -> Image.Image:
        """The heatmap blended over the photo (its display copy, see
        :meth:`display_image`), as a PIL image."""
        image = self.display_image()
        return figures.overlay(image, self.heatmap(method, size=image.size), cmap=cmap,
                               alpha=alpha, seen=coverage_mask(self._geometry_at(image.size)))

    @property
    def title(self) -> str:
        if math.isnan(self.probability):
            return f"{self.name}: {self.target_label} (score {self.score:.3g})"
        return f"{self.name}: {self.target_label} ({self.probability:.1%})"

    def _panel(self, name: str, size: tuple[int, int], caption: str | None = None
               ) -> tuple[str, np.ndarray, float]:
        caption = (caption or name) + (" (empty)" if self.empty(name) else "")
        return caption, self.heatmap(name, size=size), self._scale(name, self.raw_map(name))

    def grid(self, methods: Sequence[str] | None = None, *, cmap: str = figures.DEFAULT_CMAP
             ) -> Image.Image:
        """Side-by-side: the photo, then each method's overlay with its colour bar."""
        image = self.display_image()
        panels = [self._panel(name, image.size) for name in methods or self.methods]
        return figures.figure_to_image(figures.grid_figure(image, panels, title=self.title,
                                                           cmap=cmap))

    def save(self, directory: str | Path, *, prefix: str | None = None) -> list[Path]:
        """Write one overlay PNG per method and the grid into ``directory``."""
        directory = ensure_folder(directory)
        stem = prefix or self.name
        written = [save_image_atomic(self.overlay(name), directory / f"{stem}.{name}.png")
                   for name in self.methods]
        written.append(save_image_atomic(self.grid(), directory / f"{stem}.grid.png"))
        return written

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.grid().save(buffer, format="PNG")
        return buffer.getvalue()


def class_grid(explanations: Sequence[Explanation], methods: Sequence[str] | None = None, *,
               cmap: str = figures.DEFAULT_CMAP) -> Image.Image:
    """One picture for several targets of one photo (e.g. ``target="top:K"``).

    The photo, then one column per explanation (class) and one row per method, each
    overlay captioned with its class and probability and given its colour bar.

    Args:
        explanations: Explanations of the same photo (as :func:`explain` returns them for
            one image with ``top:K``: consecutive, one per class).
        methods: Which maps (default: those of the first explanation).

    Raises:
        ValueError: when the explanations are of different photos, or none is given.
    """
    if not explanations:
        raise ValueError("class_grid needs at least one explanation")
    first = explanations[0]
    if any(e.geometry != first.geometry or e.name != first.name for e in explanations):
        raise ValueError("class_grid draws the targets of one photo; these explanations "
                         "are of different photos (group them by image first)")
    image = first.display_image()
    rows = []
    for name in methods or first.methods:
        rows.append([e._panel(name, image.size, caption=f"{name}: {_short_title(e)}")
                     for e in explanations])
    return figures.figure_to_image(figures.panel_grid_figure(image, rows, title=first.name,
                                                             cmap=cmap))


def _short_title(exp: Explanation) -> str:
    if math.isnan(exp.probability):
        return f"{exp.target_label} ({exp.score:.3g})"
    return f"{exp.target_label} ({exp.probability:.1%})"


def parse_target(target: Any) -> tuple[Any, int]:
    """Split the CLI/explain target forms: ``"top:K"`` -> (None, K); others -> (target, 1)."""
    if isinstance(target, str):
        text = target.strip()
        if text.lower() in ("pred", "prediction"):
            return None, 1
        if text.lower().startswith("top:"):
            count = text[4:]
            if not count.isdigit() or int(count) < 1:
                raise TargetError(f"top:K needs a positive integer K, got {target!r}")
            return None, int(count)
    return target, 1


def iter_explain(classifier: Classifier, images: ImageLike | Iterable[ImageLike],
                 methods: str | Sequence[str] = ("gradcam",), *, target: Any = None,
                 top: int | None = None, layer: Any = None, normalize: str = "image",
                 sign: str = "positive", names: Sequence[str] | None = None,
                 batch_size: int = 16, method_options: Mapping[str, Any] | None = None,
                 **options: Any) -> Iterator[Explanation]:
    """Explain the images batch by batch, yielding each Explanation as soon as it is ready.

    Same arguments as :func:`explain`, except that ``normalize="batch"`` is refused: a
    shared scale needs every map's peak before the first map is shown, which a generator
    cannot have without computing everything twice. Use :func:`explain` (the list form),
    or keep a running maximum of ``exp.peaks[method]`` over the stream (the definition of
    the shared scale, see :func:`~convlens.present.heatmap.image_peaks`) and draw with
    ``exp.heatmap(method, scale=shared)``.

    Memory is bounded by ``batch_size`` (image x target rows per attribution call), not
    by the number of images or targets; only what the caller keeps of the yielded
    Explanations grows.

    Raises:
        MethodError: for ``normalize="batch"``.
    """
    if normalize == "batch":
        raise MethodError(
            "iter_explain cannot share one scale (normalize='batch'): it yields each map "
            "before the later ones exist. Use explain(...), which returns a list, or keep "
            "the running maximum of exp.peaks[method] and pass heatmap(method, scale=...)")
    yield from _explanations(classifier, images, methods, target=target, top=top,
                             layer=layer, normalize=normalize, sign=sign, names=names,
                             batch_size=batch_size, method_options=method_options,
                             options=options)


def explain(classifier: Classifier, images: ImageLike | Iterable[ImageLike],
            methods: str | Sequence[str] = ("gradcam",), *, target: Any = None,
            top: int | None = None, layer: Any = None, normalize: str = "image",
            sign: str = "positive", names: Sequence[str] | None = None,
            batch_size: int = 16, method_options: Mapping[str, Any] | None = None,
            progress: ProgressLike = None, **options: Any) -> list[Explanation]:
    """Explain the classifier's decision on each image with one or more methods.

    Args:
        classifier: A :class:`~convlens.models.classifier.Classifier` (or an ``nn.Module``,
            wrapped with :func:`~convlens.models.classifier.as_classifier`).
        images: Paths, PIL images or arrays (one or an iterable), or a
            :class:`~convlens.models.classifier.Prepared` batch (network inputs already
            made, with their photos, which may be None, and geometries).
        methods: Method names (see ``convlens.methods()``).
        target: ``None``/``"pred"`` (the prediction), an index, a class name, one per
            image, ``"top:K"``, or a score function ``f(output) -> (N,)`` (see
            :mod:`convlens.attribution.targets`).
        top: Explain the top ``top`` classes of each image (one Explanation per class).
        layer: Layer for layer-space methods (default: the classifier's
            :meth:`~convlens.models.classifier.Classifier.default_layer`).
        normalize: ``"image"`` (each map scaled to its own peak) or ``"batch"`` (maps of
            one method share one scale across the whole call, whatever ``batch_size``: the
            maximum of the maps' own peaks, see
            :func:`~convlens.present.heatmap.image_peaks`; so magnitudes compare).
        sign: Which sign of signed maps is shown.
        names: Display names for the images (default: file stems or ``image-N``).
        batch_size: At most this many (image x target) rows per attribution call; memory
            is bounded by it.
        method_options: Method options whose names clash with explain's own arguments
            (e.g. ``{"batch_size": 32}`` for occlusion's masked copies per pass).
        progress: A callback given an ``explain`` :class:`~convlens.progress.ProgressEvent`
            after each batch of images, ``True`` (plain lines, or a bar in a notebook),
            ``False``/None for silence (see :func:`convlens.progress.resolve_progress`).
        **options: Method options (``steps=``, ``masks=``...).

    Returns:
        One :class:`Explanation` per image (per image and class with ``top``), in order.

    Raises:
        TargetError: on a bad target, e.g. ``top:K`` with more than the model's classes.

    Example:
        >>> exps = explain(load_model(), ["cat.jpg"], ["gradcam", "saliency"])  # doctest: +SKIP
        >>> exps[0].overlay("gradcam").save("cat-gradcam.png")                  # doctest: +SKIP
    """
    callback = resolve_progress(progress)
    results = list(_explanations(classifier, images, methods, target=target, top=top,
                                 layer=layer, normalize=normalize, sign=sign, names=names,
                                 batch_size=batch_size, method_options=method_options,
                                 options=options, progress=callback))
    if normalize == "batch":
        for name in (results[0].methods if results else []):
            shared = max(exp.peaks[name] for exp in results)
            for exp in results:
                exp.scales[name] = shared
    return results


def _explanations(classifier: ModelLike, images: Any, methods: str | Sequence[str], *, target: Any,
                  top: int | None, layer: Any, normalize: str, sign: str,
                  names: Sequence[str] | None, batch_size: int,
                  method_options: Mapping[str, Any] | None, options: Mapping[str, Any],
                  progress: ProgressCallback | None = None) -> Iterator[Explanation]:
    classifier = as_classifier(classifier)
    method_names = [methods] if isinstance(methods, str) else list(methods)
    specs = {name: get_method(name) for name in method_names}
    options = _checked_settings(normalize, sign, batch_size, method_options, options)
    target, k = _target_and_k(target, top)
    items = _items(images)
    if names is not None and len(names) != len(items):
        raise MethodError(f"got {len(names)} names for {len(items)} images")
    per_image = _per_image_targets(target, len(items))
    scorer = is_score_function(target)
    images_per_batch = max(1, batch_size // k)
    layer_name = None
    emit(progress, "explain", 0, len(items))
    for start in range(0, len(items), images_per_batch):
        chunk = items[start:start + images_per_batch]
        prepared = _prepare_one_by_one(classifier, chunk)
        outputs = classifier.outputs(prepared.x) if scorer else classifier.logits(prepared.x)
        probabilities = _probabilities(classifier, outputs)
        chunk_target = per_image[start:start + len(chunk)] if per_image is not None \
            else target
        indices = _class_indices(classifier, outputs, probabilities, k, chunk_target, target,
                                 scorer)
        scores = (score_logits(target, outputs)[:, 0] if scorer
                  else outputs.gather(1, indices)).float().cpu()
        if layer_name is None and any(s.needs_layer for s in specs.values()):
            layer_name = _layer_name(classifier, layer, prepared.x)
        top5 = probabilities.topk(min(5, probabilities.shape[1]), dim=1) \
            if probabilities is not None else None
        rows = len(chunk) * k
        for row_start in range(0, rows, batch_size):
            row_ids = torch.arange(row_start, min(rows, row_start + batch_size))
            image_ids = row_ids // k
            flat = indices[image_ids, row_ids % k]
            raw = attribute(classifier, prepared.x[image_ids.to(prepared.x.device)],
                            method_names, target=target if scorer else flat, layer=layer,
                            **options)
            for j, row in enumerate(row_ids.tolist()):
                i, column = row // k, row % k
                item = chunk[i]
                attributions = {m: raw[m][j].detach().cpu().clone() for m in method_names}
                peaks = {m: float(image_peaks(_shown_maps(a, specs[m], sign),
                                              display_percentile(specs[m].space))[0])
                         for m, a in attributions.items()}
                index = -1 if scorer else int(flat[j])
                exp = Explanation(
                    photo=prepared.images[i],
                    source=Path(item) if isinstance(item, (str, os.PathLike)) else None,
                    name=(names[start + i] if names else _default_name(item, start + i)),
                    geometry=prepared.geometries[i],
                    target=index,
                    target_label=score_name(target) if scorer else classifier.label(index),
                    **_prediction_fields(classifier, probabilities, top5, i, index, scorer),
                    attributions=attributions,
                    layer=layer_name,
                    scales=dict(peaks) if normalize == "image" else {},
                    sign=sign,
                    peaks=peaks,
                    score=float(scores[i, column] if scores.dim() == 2 else scores[i]),
                )
                exp.notes.extend(_notes(exp, classifier, options))
                for note in exp.notes:
                    warnings.warn(f"{exp.name}: {note}", ConvlensWarning, stacklevel=3)
                yield exp
        del prepared, raw
        emit(progress, "explain", start + len(chunk), len(items))


def _checked_settings(normalize: str, sign: str, batch_size: int,
                      method_options: Mapping[str, Any] | None,
                      options: Mapping[str, Any]) -> dict[str, Any]:
    """Check explain's display and batching settings; return the one merged option dict.

    ``**options`` and ``method_options`` are two ways to pass the same thing, so a name
    given in both is an error rather than a silent override."""
    if normalize not in NORMALIZATIONS:
        raise MethodError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
    if sign not in SIGNS:
        raise MethodError(f"unknown sign {sign!r}; valid: {', '.join(SIGNS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MethodError(f"batch_size must be a positive int, got {batch_size!r}")
    clash = set(options) & set(method_options or {})
    if clash:
        raise MethodError(f"option {sorted(clash)[0]!r} given twice (in **options and in "
                          "method_options)")
    merged = {**options, **(method_options or {})}
    if "output" in merged:
        raise MethodError("explain takes the model output to explain from the Classifier: "
                          "Classifier(module, output=...) (an index or a key)")
    return merged


def _target_and_k(target: Any, top: int | None) -> tuple[Any, int]:
    """The parsed target and how many classes to explain per image (``top=K`` or ``top:K``)."""
    target, k = parse_target(target)
    if top is not None:
        if target is not None:
            raise TargetError("give either a target or top=K, not both")
        k = int(top)
        if k < 1:
            raise TargetError(f"top must be a positive integer, got {top!r}")
    return target, k


def _class_indices(classifier: Classifier, outputs: torch.Tensor,
                   probabilities: torch.Tensor | None, k: int, chunk_target: Any,
                   target: Any, scorer: bool) -> torch.Tensor:
    """The ``(N, k)`` class indices to explain for one chunk: its top k, or its targets."""
    if k > 1:
        classes = outputs.shape[1]
        if k > classes:
            raise TargetError(f"top:{k} asks for more classes than the model has: it has "
                              f"{classes} classes; use top:{classes} or fewer")
        return probabilities.topk(k, dim=1).indices
    logits = score_logits(target, outputs) if scorer else outputs
    return resolve_targets(chunk_target, logits, classifier.labels).view(-1, 1)


def _prediction_fields(classifier: Classifier, probabilities: torch.Tensor | None,
                       top5: Any, i: int, index: int, scorer: bool) -> dict[str, Any]:
    """Image ``i``'s probability of the explained class and its top-5 predictions
    (NaN and none when the output is a score or not a class distribution)."""
    return {
        "probability": (math.nan if scorer or probabilities is None
                        else float(probabilities[i, index])),
        "predictions": [] if top5 is None else [
            (classifier.label(int(c)), float(p))
            for p, c in zip(top5.values[i], top5.indices[i])],
    }


def _prepare_one_by_one(classifier: Classifier, chunk: Sequence[Any]) -> Prepared:
    """Preprocess a batch decoding one photo at a time; keep only in-memory photos.

    A decoded phone photo and its conversions take tens of MB while being resized, so
    photos read from files are decoded, preprocessed and dropped one by one: the batch
    holds their network inputs only (``images`` has ``None`` for them).
    """
    tensors, images, geometries = [], [], []
    for item in chunk:
        one = item if isinstance(item, Prepared) else classifier.prepare([item])
        tensors.append(one.x.to(classifier.device))
        images.append(None if isinstance(item, (str, os.PathLike)) else one.images[0])
        geometries.append(one.geometries[0])
        del one
    return Prepared(torch.cat(tensors), images, geometries)


def _items(images: Any) -> list[Any]:
    """One image or an iterable of them, as a list (paths are cheap; pixels are not read).

    A :class:`Prepared` batch (e.g. decoded by :func:`convlens.io.datasets.batches`)
    becomes one single-row Prepared per image, used as it is."""
    if isinstance(images, Prepared):
        return [Prepared(images.x[i:i + 1], images.images[i:i + 1], images.geometries[i:i + 1])
                for i in range(len(images))]
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    return [images]


def _per_image_targets(target: Any, count: int) -> Sequence[Any] | None:
    """The per-image target list, checked for length, or None for one target for all."""
    if isinstance(target, torch.Tensor) and target.numel() > 1:
        target = target.reshape(-1).tolist()
    if isinstance(target, Sequence) and not isinstance(target, str):
        if len(target) != count:
            raise TargetError(f"got {len(target)} targets for {count} images; give one "
                              "target, or exactly one per image")
        return list(target)
    return None


def _probabilities(classifier: Classifier, outputs: torch.Tensor) -> torch.Tensor | None:
    """Softmax over classes when the output is ``(N, classes)``, else None."""
    if outputs.dim() != 2:
        return None
    if classifier.labels is not None and outputs.shape[1] != len(classifier.labels):
        return None
    return outputs.float().softmax(dim=1)


def _shown_maps(attribution: torch.Tensor, spec: Method, sign: str) -> torch.Tensor:
    """``(N, H, W)`` maps as shown: the method's map (:meth:`Method.to_map`), sign applied."""
    return apply_sign(spec.to_map(attribution), sign)


def _notes(exp: Explanation, classifier: Classifier,
           options: Mapping[str, Any] | None = None) -> list[str]:
    """Warnings about results that are computed but may mean nothing, and what a concept
    method's single shown map is made of."""
    notes = [_concepts_note(name, exp.layer, options or {}) for name in exp.methods
             if get_method(name).space == "concepts"]
    width, height = exp.geometry.original_size
    if min(width, height) < TINY_SIDE:
        in_h, in_w = classifier.preprocessing.input_size
        notes.append(
            f"the photo is {width}x{height} pixels: upsampled to the network's {in_w}x{in_h} "
            "input it is (nearly) flat colour, so the maps explain the model's response to "
            "that colour, not to any content")
    for name in exp.methods:
        if exp.empty(name):
            raw = exp.raw_map(name)
            what = "all zero" if float(raw.abs().max()) == 0 else "constant"
            where = f" at layer {exp.layer}" if get_method(name).needs_layer and exp.layer \
                else ""
            notes.append(
                f"the {name} map is {what}{where}: it shows nothing, which is not evidence "
                f"that nothing in the photo matters for {exp.target_label!r} (with "
                f"sign={exp.sign!r}; try sign='all', another layer or another method)")
    return notes


def _concepts_note(name: str, layer: str | None, options: Mapping[str, Any]) -> str:
    """Which channels a concept method's shown map sums, and by which rule (``crp``)."""
    channels = options.get("channels")
    if channels is None:
        which = f"each image's {options.get('top', 4)} most relevant channels"
    else:
        given = [channels] if isinstance(channels, int) else list(channels)
        which = "channel" + ("s " if len(given) > 1 else " ") + ", ".join(map(str, given))
    rule = options.get("rule", "auto")
    composite = options.get("composite", "epsilon_plus_flat")
    how = {"auto": f"LRP ({composite}) where the model has rules, gradient x activation "
                   "otherwise",
           "lrp": f"LRP ({composite})", "gradient": "gradient x activation"}.get(rule, rule)
    return (f"the {name} map is the sum of the concept maps of {which} of layer {layer!r} "
            f"({how}); cl.concept_maps gives one map per channel")


def _layer_name(classifier: Classifier, layer: Any, x: torch.Tensor) -> str:
    if layer is None:
        return classifier.default_layer(x.shape[1:])
    if isinstance(layer, (list, tuple)):
        return "+".join(resolve_layer(classifier.module, item)[0] for item in layer)
    return resolve_layer(classifier.module, layer)[0]


def _default_name(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return Path(item).stem
    return f"image-{index}"
