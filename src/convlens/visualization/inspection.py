"""Cheap looks inside a network, and the image grids feature visualization is shown in.

* :func:`activation_maps` / :func:`activation_grid`: what each channel of a layer does with
  one photo, channels ranked by their mean activation (the most active first).
* :func:`first_layer_filters` / :func:`filter_grid`: the first convolution's weights as
  little RGB pictures (Krizhevsky et al. 2012, Fig. 3): edges, colour blobs, gratings.
* :func:`image_grid`, :func:`to_pil`, :func:`file_stem`: presentation helpers.

Nothing here optimises; one forward pass at most.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from convlens._hooks import HookSession, evaluation_mode
from convlens.errors import InputShapeError, LayerError, UnsupportedModelError
from convlens.models.classifier import Classifier, ModelLike, as_classifier
from convlens.models.layers import resolve_layer
from convlens.present.figures import colorize

__all__ = ["activation_grid", "activation_maps", "file_stem", "filter_grid",
           "first_layer_filters", "image_grid", "maps_grid", "to_pil"]

_CAPTION = 14  # caption strip height in pixels


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` (or ``(1, H, W)``) tensor in [0, 1] -> RGB PIL image."""
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return Image.fromarray(array.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def file_stem(name: str, used: set[str]) -> str:
    """A file-system-safe, unique stem for a name (``blocks.8:12`` -> ``blocks.8_12``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    stem = stem[:80]
    candidate, n = stem, 2
    while candidate in used:
        candidate, n = f"{stem}_{n}", n + 1
    used.add(candidate)
    return candidate


def image_grid(images: Sequence[Image.Image], *, columns: int | None = None,
               captions: Sequence[str] | None = None, tile: int | None = None,
               padding: int = 4, background: tuple[int, int, int] = (255, 255, 255)
               ) -> Image.Image:
    """Lay images out in a grid, optionally resized to ``tile`` pixels and captioned.

    Args:
        images: PIL images (resized to the first one's size, or to ``tile`` x ``tile``).
        columns: Images per row; default about the square root of the count.
        captions: One short text per image, written under it.
        tile: Side of each cell in pixels (nearest-neighbour when enlarging small maps).
        padding: Gap between cells.
        background: Colour of the gaps.
    """
    if not images:
        raise InputShapeError("image_grid needs at least one image")
    count = len(images)
    columns = max(1, min(count, columns or math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    width, height = (tile, tile) if tile else images[0].size
    strip = _CAPTION if captions else 0
    canvas = Image.new("RGB", (columns * (width + padding) + padding,
                               rows * (height + strip + padding) + padding), background)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        left = padding + col * (width + padding)
        top = padding + row * (height + strip + padding)
        if image.size != (width, height):
            small = image.width < width and image.height < height
            method = Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC
            image = image.resize((width, height), method)
        canvas.paste(image.convert("RGB"), (left, top))
        if captions:
            text = _fit(draw, str(captions[index]), font, width)
            draw.text((left, top + height + 1), text, fill=(0, 0, 0), font=font)
    return canvas


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Shorten ``text`` (keeping its end, the informative part) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


# --- activations -----------------------------------------------------------------------
def _prepare(model: ModelLike, image: Any) -> tuple[nn.Module, torch.Tensor]:
    """The module and a preprocessed ``(1, C, H, W)`` batch for ``image``."""
    if not isinstance(model, (Classifier, nn.Module)):
        raise UnsupportedModelError(f"expected a Classifier or an nn.Module, got "
                                    f"{type(model).__name__}")
    classifier = as_classifier(model)  # a bare module: ImageNet preprocessing, its device
    module = classifier.module
    x = image if isinstance(image, torch.Tensor) else classifier.preprocess([image])
    if not isinstance(model, Classifier) and not isinstance(image, torch.Tensor):
        param = next(iter(module.parameters()), None)
        if param is not None:
            x = x.to(param.dtype)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise InputShapeError(f"one image at a time: expected a (1, C, H, W) input, got "
                              f"{tuple(x.shape)}")
    return module, x


def activation_maps(model: ModelLike, image: Any, layer: str | nn.Module
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's activation maps for one image, and its channels ranked by mean activation.

    Args:
        model: A Classifier (its preprocessing is used) or an ``nn.Module`` (ImageNet
            preprocessing for photos).
        image: A path, PIL image or array (preprocessed here), or a preprocessed
            ``(1, C, H, W)`` tensor.
        layer: Dotted name or module; its output must be ``(1, C, h, w)``.

    Returns:
        ``(maps, order)``: ``maps`` is the raw ``(C, h, w)`` float32 activation, ``order``
        the channel indices sorted by mean activation, highest first.

    Example:
        >>> maps, order = activation_maps(clf, "cat.jpg", "blocks.4")   # doctest: +SKIP
        >>> maps[order[0]]      # the channel this photo drives hardest  # doctest: +SKIP
    """
    module, x = _prepare(model, image)
    name, target = resolve_layer(module, layer)
    with HookSession() as hooks, evaluation_mode(module), torch.no_grad():
        capture = hooks.capture(target, name)
        module(x)
        act = capture.output
    if act.dim() != 4:
        raise LayerError(f"layer {name!r} gives {tuple(act.shape)}; activation maps need a "
                         "spatial (N, C, H, W) layer")
    maps = act[0].detach().float()
    order = maps.mean(dim=(1, 2)).argsort(descending=True, stable=True)
    return maps, order


def activation_grid(model: ModelLike, image: Any, layer: str | nn.Module, *, top: int | None = 64,
                    columns: int | None = None, normalize: str = "layer",
                    cmap: str = "viridis", tile: int = 64, captions: bool = True
                    ) -> Image.Image:
    """A grid of a layer's activation maps for one image, most active channel first.

    Args:
        model, image, layer: As for :func:`activation_maps`.
        top: Show the ``top`` most active channels (None: all).
        columns: Tiles per row.
        normalize: ``"layer"`` (one colour scale for all maps: their strengths compare) or
            ``"channel"`` (each map to its own range: shapes of weak maps show).
        cmap: A matplotlib colormap name.
        tile: Pixel size of each (nearest-neighbour enlarged) map.
        captions: Write ``#channel mean`` under each map.
    """
    maps, order = activation_maps(model, image, layer)
    return maps_grid(maps, order, top=top, columns=columns, normalize=normalize, cmap=cmap,
                     tile=tile, captions=captions)


def maps_grid(maps: torch.Tensor, order: torch.Tensor, *, top: int | None = 64,
              columns: int | None = None, normalize: str = "layer", cmap: str = "viridis",
              tile: int = 64, captions: bool = True) -> Image.Image:
    """The picture of :func:`activation_grid` from maps already computed."""
    if normalize not in ("layer", "channel"):
        raise InputShapeError(f"normalize must be 'layer' or 'channel', got {normalize!r}")
    if top is not None:
        order = order[:max(1, int(top))]
    chosen = maps[order]
    if normalize == "layer":
        low, high = chosen.min(), chosen.max()
    else:
        low = chosen.amin(dim=(1, 2), keepdim=True)
        high = chosen.amax(dim=(1, 2), keepdim=True)
    scaled = (chosen - low) / (high - low).clamp_min(1e-12)
    tiles = [Image.fromarray(colorize(m.cpu().numpy(), cmap)) for m in scaled]
    means = maps.mean(dim=(1, 2))
    labels = [f"#{int(c)} {float(means[c]):.2g}" for c in order] if captions else None
    return image_grid(tiles, columns=columns, captions=labels, tile=tile, padding=2)


# --- first-layer filters ---------------------------------------------------------------
def _first_conv(module: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, candidate in module.named_modules():
        if isinstance(candidate, nn.Conv2d):
            return name, candidate
    raise LayerError(f"{type(module).__name__} has no nn.Conv2d layer to show filters of")


def first_layer_filters(model: ModelLike, layer: str | nn.Module | None = None) -> torch.Tensor:
    """The filters of the first convolution (or ``layer``) as images ``(K, 3, kh, kw)``.

    Each weight is mapped to ``0.5 + 0.5 * w / max|w|`` with one scale for all filters
    (grey is zero, so filters compare). Needs 1 or 3 input channels: later layers' filters
    act on feature maps, not colours, and are better seen through :func:`visualize`.
    """
    module = model.module if isinstance(model, Classifier) else model
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(f"expected a Classifier or an nn.Module, got "
                                    f"{type(model).__name__}")
    if layer is None:
        name, conv = _first_conv(module)
    else:
        name, conv = resolve_layer(module, layer)
        if not isinstance(conv, nn.Conv2d):
            raise LayerError(f"layer {name!r} is a {type(conv).__name__}, not an nn.Conv2d")
    weight = conv.weight.detach().float().cpu()
    if weight.shape[1] not in (1, 3):
        raise LayerError(f"layer {name!r} sees {weight.shape[1]} input channels; filters can "
                         "be drawn as pictures only for layers that see the image (1 or 3 "
                         "channels): the first convolution")
    scale = weight.abs().max().clamp_min(1e-12)
    images = 0.5 + 0.5 * weight / scale
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def filter_grid(model: ModelLike, layer: str | nn.Module | None = None, *, tile: int = 48,
                columns: int | None = None) -> Image.Image:
    """The first convolution's filters as a grid of enlarged RGB tiles."""
    filters = first_layer_filters(model, layer)
    tiles = [to_pil(f) for f in filters]
    return image_grid(tiles, columns=columns, tile=tile, padding=2)
