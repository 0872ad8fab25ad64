"""Where a concept sits in an image: a layer position's receptive field, the patch of it that
a channel's conditional relevance covers, and that patch cut from the photo.

A reference set (:mod:`convlens.concepts.references`) stores per channel only *which* image
and *which* position of the layer; the box shown is recomputed here when it is displayed:

* :func:`receptive_box`: the input region a layer position can see at all. It is the
  gradient support of that position with respect to the input in a *structural* copy of the
  network (every convolution and linear map averaging, BatchNorm the identity, max pools
  replaced by average pools of the same geometry, an all-ones input), so that no ReLU and no
  max pool hides a pixel that the architecture connects. Computed once per (network, layer,
  input size, row) and (..., column), and cached while the network lives (a box's rows
  depend only on the position's row, its columns only on its column). A max pool called as
  a function (``F.max_pool2d`` in ``forward``) cannot be swapped: its box is then a lower
  bound.
* :func:`patch_box`: that receptive field tightened to where the CRP map conditioned on the
  channel *and* the position concentrates (Achtibat et al. 2023; zennit-crp blurs the map and
  crops where it exceeds 10 % of its maximum). Here: inside the receptive field, the
  bounding box of the pixels whose ``|map|`` and whose 5x5 mean of ``|map|`` are both at or
  above ``threshold`` (0.1) of their maxima (isolated specks drop out; the box does not grow
  by the smoothing's reach), widened to ``min_side`` so a tiny box stays readable, kept inside the
  image. Mode ``"relevance"`` starts the backward pass from the layer's relevance at that
  channel and position; ``"activation"`` from the activation itself (LRP of the neuron's
  value, or input x gradient of it where the model has no rules).
* :func:`crop_patch`: the box, given in the network's input pixels, cut from the original
  photo at full quality (:class:`~convlens.preprocessing.Geometry` says where the
  input lies in the photo).

See docs/architecture.md, "Concepts".
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convlens._hooks import evaluation_mode, gradients_enabled
from convlens.attribution.core import Problem, _prepare_x
from convlens.attribution.crp import _lrp_parameters, _problem, layer_graph
from convlens.errors import LayerError, PatchError
from convlens.models.classifier import ModelLike
from convlens.models.layers import resolve_layer

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels, right and bottom exclusive (PIL's order)."""

MODES = ("relevance", "activation")
THRESHOLD = 0.1
SMOOTHING = 5

_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[int, int]]] = \
    weakref.WeakKeyDictionary()
_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_CHUNK = 4  # seeds per backward pass: 4 float64 copies of the network's activations


# ------------------------------------------------------------------ receptive field


def _structural_copy(model: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``model`` whose gradient support is its connectivity."""
    if model in _STRUCTURES:
        return _STRUCTURES[model]
    twin = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    twin.requires_grad_(False)  # only the input's gradient: no weight saved for backward
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                fan_in = module.weight[0].numel()
                module.weight.fill_(1.0 / fan_in)
            elif isinstance(module, nn.Linear):
                module.weight.fill_(1.0 / module.in_features)
            elif isinstance(module, nn.modules.batchnorm._NormBase):
                if module.weight is not None:
                    module.weight.fill_(1.0)
                if module.running_mean is not None:
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0 - module.eps)
            if getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
                module.bias.zero_()
        for parent in list(twin.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.MaxPool2d) and child.dilation in (1, (1, 1)):
                    setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride,
                                                       child.padding, child.ceil_mode))
    _STRUCTURES[model] = twin
    return twin


def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    return resolve_layer(model, layer)[0]


def receptive_boxes(model: nn.Module, layer: str | nn.Module,
                    positions: Sequence[tuple[int, int]], input_shape: Sequence[int]
                    ) -> list[Box]:
    """:func:`receptive_box` of several positions.

    A box's rows depend only on the position's row and its columns only on its column
    (convolutions, pools and element-wise operations act on the two axes independently;
    a global operation makes every box the whole input). So rows and columns are cached
    apart, and one backward pass seeded at ``(i, j)`` gives the rows of ``i`` and the
    columns of ``j``: a layer of ``h x w`` positions costs ``max(h, w)`` seeds, not ``h w``.
    """
    module = getattr(model, "module", model)  # a Classifier or a module
    name = _layer_name(module, layer)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise PatchError(f"input_shape must be (C, H, W) or (1, C, H, W), got {tuple(input_shape)}")
    cache = _CACHE.setdefault(module, {})
    wanted = [(int(r), int(c)) for r, c in positions]
    rows = sorted({r for r, _c in wanted if (name, shape, "row", r) not in cache})
    cols = sorted({c for _r, c in wanted if (name, shape, "col", c) not in cache})
    count = max(len(rows), len(cols))
    seeds = [(rows[i] if i < len(rows) else wanted[0][0],
              cols[i] if i < len(cols) else wanted[0][1]) for i in range(count)]
    for start in range(0, len(seeds), _CHUNK):
        chunk = seeds[start:start + _CHUNK]
        for (row, col), (left, top, right, bottom) in zip(chunk,
                                                            _supports(module, name, shape, chunk)):
            cache[(name, shape, "row", row)] = (top, bottom)
            cache[(name, shape, "col", col)] = (left, right)
    boxes = []
    for row, col in wanted:
        top, bottom = cache[(name, shape, "row", row)]
        left, right = cache[(name, shape, "col", col)]
        boxes.append((left, top, right, bottom))
    return boxes


def receptive_box(model: nn.Module, layer: str | nn.Module, position: tuple[int, int],
                  input_shape: Sequence[int]) -> Box:
    """The input region that position ``(row, col)`` of ``layer``'s output can see.

    Args:
        model: An ``nn.Module`` or a Classifier.
        layer: Dotted name or module of a layer with a spatial output ``(N, C, h, w)``.
        position: ``(row, col)`` on that output.
        input_shape: ``(C, H, W)`` of one input (or ``(1, C, H, W)``).

    Returns:
        ``(left, top, right, bottom)`` in input pixels, right/bottom exclusive, clipped to
        the input (zero padding sees nothing).

    Example:
        >>> receptive_box(model, "features.5", (3, 4), (3, 32, 32))  # doctest: +SKIP
        (3, 1, 13, 11)
    """
    return receptive_boxes(model, layer, [position], input_shape)[0]


def _supports(module: nn.Module, name: str, shape: tuple[int, ...],
              positions: list[tuple[int, int]]) -> list[Box]:
    twin = _structural_copy(module)
    target = twin.get_submodule(name) if name else twin
    captured: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not captured:
            captured.append(output)

    x = torch.ones(len(positions), *shape, dtype=torch.float64, requires_grad=True)
    handle = target.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            try:
                twin(x)
            except Exception as error:  # noqa: BLE001 - we only need the layer's output
                if not captured:
                    raise LayerError(f"the model failed on an input of shape {shape}: "
                                     f"{error}") from None
    finally:
        handle.remove()
    if not captured:
        raise LayerError(f"layer {name!r} did not run during the forward pass; choose a layer "
                         "that the model's forward calls (see `convlens layers`)")
    output = captured[0]
    if output.dim() != 4:
        raise LayerError(f"layer {name!r} outputs shape {tuple(output.shape[1:])}; a receptive "
                         "field needs a spatial (C, h, w) output")
    height, width = output.shape[2:]
    seed = torch.zeros_like(output)
    for i, (row, col) in enumerate(positions):
        if not (0 <= row < height and 0 <= col < width):
            raise PatchError(f"position {(row, col)} is outside layer {name!r}'s {height}x"
                             f"{width} output; rows 0..{height - 1}, columns 0..{width - 1}")
        seed[i, :, row, col] = 1.0
    (grad,) = torch.autograd.grad(output, x, seed)
    support = grad.abs().sum(1) > 0
    return [_bounding_box(support[i]) or (0, 0, shape[2], shape[1]) for i in range(len(positions))]


def _bounding_box(mask: torch.Tensor) -> Box | None:
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if not len(rows) or not len(cols):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ------------------------------------------------------------------ conditional patches


@dataclass
class Patch:
    """One channel's patch of one image.

    Attributes:
        box: The tightened box (``(left, top, right, bottom)``, input pixels).
        receptive: The receptive field of the position (the whole input for ``position=None``).
        map: ``(H, W)`` the conditional relevance at the input (colour channels summed).
        channel, position, mode: What was asked.
    """

    box: Box
    receptive: Box
    map: torch.Tensor
    channel: int
    position: tuple[int, int] | None
    mode: str


def patch_boxes(classifier: ModelLike, x: torch.Tensor, layer: str | nn.Module | None,
                requests: Sequence[tuple[int, tuple[int, int] | None, str]], *,
                target: Any = None, rule: str = "auto", threshold: float = THRESHOLD,
                min_side: int | None = None) -> list[Patch]:
    """:func:`patch_box` for several ``(channel, position, mode)`` of one image, from one
    forward pass. ``position=None`` conditions on the whole channel (the CRP map of the
    channel), boxed over the whole image."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise PatchError(f"patch boxes take one image, shape (1, C, H, W); got {tuple(x.shape)}")
    if not 0 <= threshold < 1:
        raise PatchError(f"threshold must be in [0, 1), got {threshold!r}")
    for _c, _p, mode in requests:
        if mode not in MODES:
            raise PatchError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    classifier, module, output = _problem(classifier, layer, None)
    height, width = x.shape[2:]
    side = min_side if min_side is not None else max(16, round(min(height, width) / 8))
    with evaluation_mode(module), gradients_enabled():
        x = _prepare_x(x.to(classifier.device), module)
        problem = Problem(module, x, target, classifier.labels, layer, output, classifier)
        graph = layer_graph(problem, rule=rule, **_lrp_parameters({}))
        name = graph.layer
        signal = graph.layer_signal()
        activation = graph.activation.detach()
        channels = activation.shape[1]
        spatial = [p for _c, p, _m in requests if p is not None]
        receptive = dict(zip(spatial, receptive_boxes(module, name, spatial, x.shape[1:])))
        patches = []
        for channel, position, mode in requests:
            if not 0 <= int(channel) < channels:
                raise PatchError(f"channel {channel} does not exist: layer {name!r} has "
                                 f"{channels} channels (0..{channels - 1})")
            mask = torch.zeros_like(activation)
            if position is None:
                mask[0, channel] = 1
            else:
                mask[0, channel, position[0], position[1]] = 1
            if mode == "relevance":
                seed = signal * mask
            else:
                seed = mask * activation if graph.lrp else mask
            relevance = graph.input_map(seed).sum(1)[0].detach()
            field = receptive[position] if position is not None else (0, 0, width, height)
            box = _tighten(relevance, field, threshold, side)
            patches.append(Patch(box, field, relevance, int(channel), position, mode))
    return patches


def patch_box(classifier: ModelLike, image_tensor: torch.Tensor, layer: str | nn.Module | None,
              channel: int, position: tuple[int, int], mode: str = "relevance", *,
              target: Any = None, rule: str = "auto", threshold: float = THRESHOLD,
              min_side: int | None = None) -> Box:
    """The box of ``image_tensor`` where ``channel`` at ``position`` of ``layer`` looks.

    Args:
        classifier: A Classifier or an ``nn.Module`` returning logits.
        image_tensor: One preprocessed image ``(1, C, H, W)``.
        layer: The layer (default: the model's default layer).
        channel, position: The neuron: a channel and a ``(row, col)`` on the layer's output.
        mode: ``"relevance"`` (the neuron's share of the target's relevance, CRP) or
            ``"activation"`` (what makes the neuron fire).
        target: The class explained in ``"relevance"`` mode (default: the predicted one).
        threshold: Pixels at or above this share of the smoothed map's maximum are kept.
        min_side: The smallest side of the box (default ``max(16, min(H, W) / 8)``).

    Returns:
        ``(left, top, right, bottom)`` in input pixels, inside the receptive field unless
        ``min_side`` widened it, always inside the image.

    Example:
        >>> box = patch_box(clf, clf.preprocess("cat.jpg"), "layer4", 7, (3, 2))  # doctest: +SKIP
    """
    (patch,) = patch_boxes(classifier, image_tensor, layer, [(channel, position, mode)],
                           target=target, rule=rule, threshold=threshold, min_side=min_side)
    return patch.box


def _tighten(relevance: torch.Tensor, field: Box, threshold: float, side: int) -> Box:
    """The bounding box of the strong pixels of ``|relevance|`` in ``field`` (see the module
    docstring), widened to ``side`` and kept inside the image."""
    height, width = relevance.shape
    inside = torch.zeros(height, width, dtype=torch.bool, device=relevance.device)
    left, top, right, bottom = field
    inside[top:bottom, left:right] = True
    raw = torch.where(inside, relevance.abs().float(), torch.zeros((), device=relevance.device))
    smooth = F.avg_pool2d(raw[None, None], SMOOTHING, stride=1, padding=SMOOTHING // 2,
                          count_include_pad=False)[0, 0]
    peak, smooth_peak = float(raw.max()), float(smooth.max())
    # a pixel counts where it is strong itself and its neighbourhood is too: an isolated
    # speck fails the second test, and the smoothing does not grow the box
    keep = (raw >= threshold * peak) & (smooth >= threshold * smooth_peak) & (raw > 0)
    box = _bounding_box(keep) if peak > 0 else None
    box = box or field
    return _widen(box, side, width, height)


def _widen(box: Box, side: int, width: int, height: int) -> Box:
    left, top, right, bottom = box

    def grow(low: int, high: int, size: int) -> tuple[int, int]:
        want = min(side, size)
        if high - low >= want:
            return low, high
        low = max(0, low - (want - (high - low)) // 2)
        high = low + want
        if high > size:
            low, high = size - want, size
        return low, high

    left, right = grow(left, right, width)
    top, bottom = grow(top, bottom, height)
    return left, top, right, bottom


# ------------------------------------------------------------------ cut from the photo


def crop_patch(photo: Image.Image, geometry: Any, box: Box,
               input_size: tuple[int, int]) -> Image.Image:
    """Cut ``box`` (input pixels of an ``input_size = (H, W)`` network input) from ``photo``.

    ``geometry`` is the :class:`~convlens.preprocessing.Geometry` of the photo's
    preprocessing (``Preprocessing.resize_image`` / ``load_file``): the input's box in the
    photo. The crop is taken from the full-size photo, clipped to it, at least one pixel.
    """
    height, width = input_size
    g_left, g_top, g_right, g_bottom = geometry.box
    sx, sy = (g_right - g_left) / width, (g_bottom - g_top) / height
    left, top, right, bottom = box
    photo_w, photo_h = photo.size
    x0 = min(max(0, round(g_left + left * sx)), photo_w - 1)
    y0 = min(max(0, round(g_top + top * sy)), photo_h - 1)
    x1 = max(x0 + 1, min(photo_w, round(g_left + right * sx)))
    y1 = max(y0 + 1, min(photo_h, round(g_top + bottom * sy)))
    return photo.crop((x0, y0, x1, y1))
