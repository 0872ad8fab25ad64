"""Class activation maps: weighted sums of a layer's channels, at the layer's resolution.

The gradient-weighted variants are registered as ``combine(A, G)``: ``A`` is the layer's
activation ``(N, K, h, w)``, ``G`` the gradient of the target logit with respect to it. The
runner in :mod:`convlens.attribution.core` computes ``A`` and ``G`` once per call, with a
backward pass that stops at the layer, and derives every requested variant from them.
"""

from __future__ import annotations

import torch

from convlens.attribution.core import register


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor, relu: bool) -> torch.Tensor:
    cam = (weights * activations).sum(dim=1, keepdim=True)
    return cam.clamp_min(0) if relu else cam


@register("gradcam", family="cam", space="layer", gradient_cam=True,
          reference="Selvaraju et al. 2017, Grad-CAM",
          summary="channels weighted by their spatially averaged gradient")
def gradcam(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True
            ) -> torch.Tensor:
    """ReLU(sum_k mean_ij(G_k) A_k)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return _weighted_sum(weights, activations, relu)


@register("layercam", family="cam", space="layer", gradient_cam=True,
          reference="Jiang et al. 2021, LayerCAM",
          summary="activations weighted position by position by their positive gradient")
def layercam(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True
             ) -> torch.Tensor:
    """ReLU(sum_k ReLU(G_k) * A_k)."""
    return _weighted_sum(gradients.clamp_min(0), activations, relu)
