"""``explain``: photos in, Explanation objects out (attribution plus presentation).

:func:`explain` preprocesses the photos, predicts, resolves the targets (the prediction,
given classes, class names, or the top k classes), runs every requested method in one
:func:`~convlens.attribution.core.attribute` call (so gradient CAMs share their pass) and
wraps the raw results with what is needed to show them over the photo as displayed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.attribution.core import Method, attribute, get_method
from convlens.attribution.targets import resolve_targets
from convlens.errors import TargetError
from convlens.models.classifier import Classifier, ImageLike
from convlens.models.preprocessing import Geometry, coverage_mask, map_to_original
from convlens.present import figures
from convlens.present.heatmap import (
    apply_sign,
    display_percentile,
    is_empty,
    reduce_channels,
    remove_offset,
    scale_of,
    to_unit,
)


@dataclass
class Explanation:
    """One image, one target class, one or more attribution maps.

    Attributes:
        image: The photo as displayed (EXIF orientation applied), RGB.
        name: A short name for files and titles.
        target: The explained class index; ``target_label`` its name.
        probability: The model's softmax probability for the target.
        predictions: The model's top classes ``[(label, probability), ...]``.
        attributions: Raw attribution per method, on the CPU: ``(C, H, W)`` for
            input-space methods, ``(1, h, w)`` for layer-space methods.
        layer: The layer used by layer-space methods, if any.
        scales: The raw value that maps to 1 per method (the image's own peak, or the
            batch's peak when ``normalize="batch"``).
        sign: Which sign of signed maps is shown (``positive`` = evidence for the class).
    """

    image: Image.Image
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
        spec = get_method(name)
        reduced = reduce_channels(self.attributions[name], spec.channel_reduction)
        if spec.offset:
            reduced = remove_offset(reduced)
        return apply_sign(reduced[0], sign or self.sign)

    def heatmap(self, method: str | None = None, *, sign: str | None = None,
                scale: float | None = None) -> np.ndarray:
        """``(height, width)`` float32 map in [0, 1] at the original photo's size.

        Args:
            method: Which map (default: the first).
            sign: ``positive`` (default), ``negative``, ``absolute`` or ``all``.
            scale: Raw value mapped to 1; default the explanation's (per image or batch).
        """
        name = self._method(method)
        raw = self.raw_map(name, sign=sign)
        if scale is None:
            scale = self._scale(name, raw)
        unit = to_unit(raw[None], torch.tensor([float(scale)]), sign or self.sign)[0]
        return map_to_original(unit, self.geometry)

    def _scale(self, name: str, raw: torch.Tensor) -> float:
        if self.scales.get(name):
            return self.scales[name]
        percentile = display_percentile(get_method(name).space)
        return float(scale_of(raw[None], "image", percentile)[0])

    def empty(self, method: str | None = None) -> bool:
        """True when the map is constant (for example all zero): nothing to show."""
        return bool(is_empty(self.raw_map(method)[None])[0])

    def overlay(self, method: str | None = None, *, cmap: str = figures.DEFAULT_CMAP,
                alpha: float = 0.5) -> Image.Image:
        """The heatmap blended over the photo, as a PIL image."""
        return figures.overlay(self.image, self.heatmap(method), cmap=cmap, alpha=alpha,
                               seen=coverage_mask(self.geometry))

    @property
    def title(self) -> str:
        return f"{self.name}: {self.target_label} ({self.probability:.1%})"

    def grid(self, methods: Sequence[str] | None = None, *, cmap: str = figures.DEFAULT_CMAP
             ) -> Image.Image:
        """Side-by-side: the photo, then each method's overlay with its colour bar."""
        panels = []
        for name in methods or self.methods:
            caption = name + (" (empty)" if self.empty(name) else "")
            scale = self._scale(name, self.raw_map(name))
            panels.append((caption, self.heatmap(name), scale))
        return figures.figure_to_image(figures.grid_figure(self.image, panels, title=self.title,
                                                           cmap=cmap))

    def save(self, directory: str | Path, *, prefix: str | None = None) -> list[Path]:
        """Write one overlay PNG per method and the grid into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = prefix or self.name
        written = []
        for name in self.methods:
            path = directory / f"{stem}.{name}.png"
            self.overlay(name).save(path)
            written.append(path)
        grid_path = directory / f"{stem}.grid.png"
        self.grid().save(grid_path)
        written.append(grid_path)
        return written

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.grid().save(buffer, format="PNG")
        return buffer.getvalue()


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


def explain(classifier: Classifier, images: ImageLike | Sequence[ImageLike],
            methods: str | Sequence[str] = ("gradcam",), *, target: Any = None,
            top: int | None = None, layer: Any = None, normalize: str = "image",
            sign: str = "positive", names: Sequence[str] | None = None, **options: Any
            ) -> list[Explanation]:
    """Explain the classifier's decision on each image with one or more methods.

    Args:
        classifier: A :class:`~convlens.models.classifier.Classifier`.
        images: Paths, PIL images or arrays (one or a list).
        methods: Method names (see ``convlens.methods()``).
        target: ``None``/``"pred"`` (the prediction), an index, a class name, one per
            image, or ``"top:K"``.
        top: Explain the top ``top`` classes of each image (one Explanation per class).
        layer: Layer for layer-space methods (default: the last spatial layer).
        normalize: ``"image"`` (each map scaled to its own peak) or ``"batch"`` (maps of
            one method share a scale across all images, so magnitudes compare).
        sign: Which sign of signed maps is shown.
        names: Display names for the images (default: file stems or ``image-N``).
        **options: Method options (``steps=``, ``batch_size=``...).

    Returns:
        One :class:`Explanation` per image (per image and class with ``top``).

    Example:
        >>> exps = explain(load_model(), ["cat.jpg"], ["gradcam", "saliency"])  # doctest: +SKIP
        >>> exps[0].overlay("gradcam").save("cat-gradcam.png")                  # doctest: +SKIP
    """
    method_names = [methods] if isinstance(methods, str) else list(methods)
    for name in method_names:
        get_method(name)
    target, k = parse_target(target)
    if top is not None:
        k = int(top)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    prepared = classifier.prepare(items)
    probabilities = classifier.logits(prepared.x).softmax(dim=1)
    n = prepared.x.shape[0]
    if k > 1 or top is not None:
        if target is not None:
            raise TargetError("give either a target or top=K, not both")
        k = min(k, probabilities.shape[1])
        indices = probabilities.topk(k, dim=1).indices  # (N, K)
    else:
        indices = resolve_targets(target, probabilities, classifier.labels).view(n, 1)
    x = prepared.x.repeat_interleave(indices.shape[1], dim=0)
    flat_targets = indices.reshape(-1)
    raw = attribute(classifier, x, method_names, target=flat_targets, layer=layer, **options)
    specs = {name: get_method(name) for name in method_names}
    layer_name = _layer_name(classifier, layer, prepared.x) if any(
        s.needs_layer for s in specs.values()) else None
    scales = _scales(raw, specs, normalize, sign)
    top5 = probabilities.topk(min(5, probabilities.shape[1]), dim=1)
    results = []
    for row in range(x.shape[0]):
        i = row // indices.shape[1]
        target_index = int(flat_targets[row])
        results.append(Explanation(
            image=prepared.images[i],
            name=(names[i] if names else _default_name(items[i], i)),
            geometry=prepared.geometries[i],
            target=target_index,
            target_label=classifier.label(target_index),
            probability=float(probabilities[i, target_index]),
            predictions=[(classifier.label(int(c)), float(p))
                         for p, c in zip(top5.values[i], top5.indices[i])],
            attributions={m: raw[m][row].detach().cpu() for m in method_names},
            layer=layer_name,
            scales={m: float(scales[m][row]) for m in method_names},
            sign=sign,
        ))
    return results


def _scales(raw: dict[str, torch.Tensor], specs: dict[str, Method], normalize: str,
            sign: str) -> dict[str, torch.Tensor]:
    scales = {}
    for name, tensor in raw.items():
        maps = reduce_channels(tensor, specs[name].channel_reduction)
        if specs[name].offset:
            maps = remove_offset(maps)
        maps = apply_sign(maps, sign)
        percentile = display_percentile(specs[name].space)
        scales[name] = scale_of(maps, normalize, percentile).cpu()
    return scales


def _layer_name(classifier: Classifier, layer: Any, x: torch.Tensor) -> str:
    from convlens.models.layers import default_layer_name, resolve_layer

    if layer is None:
        return default_layer_name(classifier.module, x.shape[1:], x.device)
    if isinstance(layer, (list, tuple)):
        return "+".join(resolve_layer(classifier.module, item)[0] for item in layer)
    return resolve_layer(classifier.module, layer)[0]


def _default_name(item: Any, index: int) -> str:
    if isinstance(item, (str, Path)):
        return Path(item).stem
    return f"image-{index}"
