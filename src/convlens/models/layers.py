"""Finding layers: listing them, resolving a user's choice, and picking a sensible default.

A layer is named as in ``model.named_modules()`` ("blocks.12.project"), or given as the
module itself. The default layer for layer-space methods (the CAM family) is the last
module, in execution order, whose output is a 4-D tensor with more than one spatial
position: the network's last convolutional feature map.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from convlens._hooks import HookSession, evaluation_mode
from convlens.errors import LayerError


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a model as ``convlens layers`` shows it.

    Attributes:
        name: Dotted name, usable as ``layer=``.
        type: The module's class name.
        output_shape: Output shape for one input sample (batch dimension dropped), or
            ``None`` when the module did not run or returned something other than a tensor.
        parameters: Number of parameters the module owns directly and through children.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    parameters: int


# model -> {input shape: (names in firing order, their output shapes)}; weak, so we never
# keep a user's model alive and never set attributes on it.
_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], list[tuple[str, tuple]]]]
_PROBES = weakref.WeakKeyDictionary()


def _probe(model: nn.Module, sample_shape: Sequence[int], device: torch.device) -> list:
    """Run one sample through ``model`` and record every module's output shape, in firing order."""
    key = tuple(int(s) for s in sample_shape)
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    cached = _PROBES.get(model, {}).get(key)
    if cached is not None:
        return cached
    fired: list[tuple[str, tuple | None]] = []
    with HookSession() as hooks, evaluation_mode(model), torch.no_grad():
        for name, module in model.named_modules():
            if not name:
                continue

            def record(_m, _i, output, name=name):
                shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
                fired.append((name, shape))

            try:
                hooks.forward_hook(module, record)
            except Exception:  # modules that refuse hooks (TorchScript) are simply not listed
                continue
        dummy = torch.zeros((1, *key), device=device, dtype=dtype)
        model(dummy)
    _PROBES.setdefault(model, {})[key] = fired
    return fired


def list_layers(model: nn.Module, sample_shape: Sequence[int], device: torch.device | str = "cpu"
                ) -> list[LayerInfo]:
    """Every named module of ``model`` with its type and output shape for one sample.

    Args:
        model: The network.
        sample_shape: The shape of one input sample, e.g. ``(3, 224, 224)``.
        device: Where to run the probing forward pass.
    """
    shapes: dict[str, tuple | None] = {}
    for name, shape in _probe(model, sample_shape, torch.device(device)):
        shapes[name] = shape  # last call wins for modules called twice
    return [
        LayerInfo(
            name=name,
            type=type(module).__name__,
            output_shape=shapes.get(name),
            parameters=sum(p.numel() for p in module.parameters()),
        )
        for name, module in model.named_modules()
        if name
    ]


def default_layer_name(model: nn.Module, sample_shape: Sequence[int],
                       device: torch.device | str = "cpu") -> str:
    """Name of the last module (in execution order) with a spatial 4-D output."""
    candidates = [
        name
        for name, shape in _probe(model, sample_shape, torch.device(device))
        if shape is not None and len(shape) == 3 and shape[1] * shape[2] > 1
    ]
    if not candidates:
        raise LayerError(
            f"{type(model).__name__} has no layer with a spatial (N, C, H, W) output for inputs "
            f"of shape {tuple(sample_shape)}; layer-space methods (CAMs) need one. Pass "
            "`layer=` explicitly or use a pixel-space method such as 'saliency'"
        )
    return candidates[-1]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Turn a dotted name or a module into ``(name, module)``, with a helpful error."""
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise LayerError(
            f"the given {type(layer).__name__} module is not part of the model; pass one of its "
            "own layers or a dotted name (see `convlens layers`)"
        )
    if not isinstance(layer, str):
        raise LayerError(
            f"layer must be a dotted name or an nn.Module, got {type(layer).__name__}"
        )
    if layer in modules and layer:
        return layer, modules[layer]
    valid = [name for name in modules if name]
    close = [name for name in valid if layer in name or name.endswith(layer)][:10]
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    shown = ", ".join(valid[:30]) + (f", ... ({len(valid) - 30} more)" if len(valid) > 30 else "")
    raise LayerError(f"unknown layer {layer!r}{hint}. Valid layers: {shown}")
