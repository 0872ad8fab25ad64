"""Layers as affine maps, and BatchNorm merged into the layer before it.

LRP rules reason about ``z = W x + b``. A convolution followed by an evaluation-mode
BatchNorm is one such map with ``W' = W * s`` and ``b' = (b - mean) * s + beta``, where
``s = gamma / sqrt(var + eps)`` (per output channel); LRP must treat the pair as one layer,
otherwise the BatchNorm's shift and scale distort the relevance (Montavon et al. 2019, sec.
10.3; Zennit's ``MergeBatchNorm`` canonizer).

Where we deviate from Zennit: Zennit merges by writing the merged weights into the model
(and BatchNorm to the identity) for the duration of the call, and finds the pairs from the
order of the module tree. We never write to the model. The merge happens on copies of the
parameters, at run time, when the propagation engine sees a BatchNorm consume *the very
tensor* a convolution or linear layer produced (data flow, not module order). So

* the model's parameters, buffers and outputs are never touched, not even during the call
  (bit-identical before, during and after, also when the forward raises or is interrupted);
* a pair is found wherever it is in the code (attributes, ``Sequential``, any order of
  registration), and a BatchNorm that follows anything else is treated as its own affine
  layer (the ``norm`` rule) instead of being silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import UnsupportedModelError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class AffineOp:
    """A layer as a function of its input and (possibly modified) parameters.

    Attributes:
        apply: ``apply(x, weight, bias) -> z``; ``bias`` may be None.
        weight: The (merged) weight; its dim 0 indexes output channels.
        bias: The (merged) bias, or None.
    """

    apply: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None


def _channelwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:
    """``x * weight + bias`` with one weight per channel (dim 1): a BatchNorm in eval mode."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    z = x * weight.view(shape)
    return z if bias is None else z + bias.view(shape)


def affine_op(module: nn.Module) -> AffineOp | None:
    """The affine map a Conv/Linear/BatchNorm computes, from detached parameters.

    Returns None for modules that are not one of these.
    """
    if isinstance(module, _CONVS):
        bias = None if module.bias is None else module.bias.detach()
        return AffineOp(module._conv_forward, module.weight.detach(), bias)
    if isinstance(module, nn.Linear):
        bias = None if module.bias is None else module.bias.detach()
        return AffineOp(F.linear, module.weight.detach(), bias)
    if isinstance(module, _BATCHNORMS):
        scale, shift = batchnorm_affine(module)
        return AffineOp(_channelwise, scale, shift)
    return None


def batchnorm_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift of an evaluation-mode BatchNorm.

    Raises:
        UnsupportedModelError: If the BatchNorm has no running statistics (it would
            normalise with batch statistics, which is not an affine map of one sample).
    """
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} without running statistics (track_running_stats=False) "
            "normalises with the batch's own statistics, which LRP cannot treat as a layer; "
            "give it a rule, e.g. rules={'<its name>': 'pass'}"
        )
    mean = module.running_mean.detach()
    scale = torch.rsqrt(module.running_var.detach() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach()
    shift = -mean * scale
    if module.bias is not None:
        shift = shift + module.bias.detach()
    return scale, shift


def merge_batchnorm(op: AffineOp, batchnorm: nn.Module) -> AffineOp | None:
    """``batchnorm(op(x))`` as one affine map, or None if the shapes do not match."""
    scale, shift = batchnorm_affine(batchnorm)
    if op.weight.shape[0] != scale.shape[0]:
        return None
    view = (-1,) + (1,) * (op.weight.dim() - 1)
    bias = shift if op.bias is None else op.bias * scale + shift
    return AffineOp(op.apply, op.weight * scale.view(view), bias)
