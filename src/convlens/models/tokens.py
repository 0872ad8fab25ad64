"""Token outputs of vision transformers laid out as spatial grids, for layer-space methods.

A ViT block outputs ``(N, T, D)``: ``T = P + gh * gw`` tokens of ``D`` features, where the
``P`` prefix tokens (the class token, distillation or register tokens) come first and the
rest are the image patches in row-major order. Layer-space methods (the CAM family) need an
``(N, C, h, w)`` feature map; :func:`to_grid` drops the prefix tokens and lays the patch
tokens out as ``(N, D, gh, gw)`` (docs/architecture.md, "Models").

The grid is inferred from the input size: the patch size ``p`` is the one for which
``(H / p) * (W / p)`` patches leave the fewest prefix tokens (at most :data:`MAX_PREFIX`),
so ``P = T - gh * gw``. This holds for the standard ViT / DeiT / ViT-with-registers
layouts; a model whose tokens are not a row-major patch grid after the prefix (pooled or
merged tokens, windows as in Swin) is not a grid we can recover and is refused with the
shape we saw. Sequence-first outputs ``(T, N, D)`` (``nn.MultiheadAttention`` without
``batch_first``) are recognised when the first dimension is not the batch size. Not
detected: channels-first tokens ``(N, D, T)``; a model that keeps them must be given a layer
whose output is ``(N, T, D)`` (or a 4-D map).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens.errors import LayerError

MAX_PREFIX = 16


@dataclass(frozen=True)
class TokenLayout:
    """How a token tensor maps onto the patch grid.

    Attributes:
        prefix: Number of leading non-patch tokens (class, distillation, register tokens).
        grid: ``(gh, gw)`` patch grid.
        sequence_first: The tensor is ``(T, N, D)`` rather than ``(N, T, D)``.
    """

    prefix: int
    grid: tuple[int, int]
    sequence_first: bool = False


def infer_layout(shape: tuple[int, ...], input_size: tuple[int, int], batch: int,
                 name: str = "layer") -> TokenLayout:
    """The :class:`TokenLayout` of a 3-D token output of ``shape`` for inputs of ``input_size``.

    Raises:
        LayerError: when no patch grid with at most :data:`MAX_PREFIX` prefix tokens fits.
    """
    if len(shape) != 3:
        raise LayerError(f"layer {name!r} outputs shape {tuple(shape)}, not tokens (N, T, D)")
    sequence_first = shape[0] != batch and shape[1] == batch
    tokens = shape[0] if sequence_first else shape[1]
    height, width = input_size
    best: TokenLayout | None = None
    for patch in range(1, min(height, width) + 1):
        if height % patch or width % patch:
            continue
        gh, gw = height // patch, width // patch
        prefix = tokens - gh * gw
        if 0 <= prefix <= MAX_PREFIX and (best is None or prefix < best.prefix):
            best = TokenLayout(prefix, (gh, gw), sequence_first)
    if best is None or best.grid[0] * best.grid[1] < 2:
        raise LayerError(
            f"layer {name!r} outputs {tuple(shape)}: {tokens} tokens do not form a patch grid "
            f"for inputs of {height}x{width} (expected (H/p)*(W/p) patch tokens after at most "
            f"{MAX_PREFIX} class/register tokens). Choose a block whose output keeps one token "
            "per patch (e.g. 'blocks.N' of a ViT), or a convolutional layer"
        )
    return best


def to_grid(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``(N, T, D)`` (or ``(T, N, D)``) tokens -> ``(N, D, gh, gw)``, prefix tokens dropped.

    Differentiable and a view where possible; the same layout applied to the gradient of
    the tokens gives the gradient of the grid.
    """
    if layout.sequence_first:
        tokens = tokens.transpose(0, 1)
    patches = tokens[:, layout.prefix:]
    gh, gw = layout.grid
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that compute attention, outermost first, in module order.

    ``nn.MultiheadAttention`` and every module whose class is named ``*Attention`` (timm's
    ``Attention``, Hugging Face's ``ViTSelfAttention``, Swin's ``WindowAttention``); a module
    inside one is not listed again.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not (isinstance(module, nn.MultiheadAttention)
                or type(module).__name__.endswith("Attention")):
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        found.append((name, module))
    return found
