"""Zennit as the LRP peer: composites, canonizers and the relevance it computes.

Imported only through the ``zennit_peer`` fixture of test_relevance.py, after
``pytest.importorskip("zennit")``: without Zennit the peer comparisons skip and every
paper-reference and property test still runs.
"""

from __future__ import annotations

import torch
from tiny_models import BasicBlock
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, ZBox, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Convolution
from zennit.types import Linear as AnyLinear

__all__ = ["MBConvCanonizer", "ResNetCanonizer", "SequentialMergeBatchNorm",
           "TinyBlockCanonizer", "cases", "relevance"]


class TinyBlockCanonizer(AttributeCanonizer):
    """Zennit's torchvision BasicBlock canonizer (residual sum as a module) for ours."""

    def __init__(self) -> None:
        super().__init__(self._attributes)

    @staticmethod
    def _attributes(name, module):
        if isinstance(module, BasicBlock):
            return {"forward": ResNetBasicBlockCanonizer.forward.__get__(module),
                    "canonizer_sum": Sum()}
        return None


class MBConvCanonizer(AttributeCanonizer):
    """The bundled EfficientNet-Lite's residual sum as a Zennit ``Sum`` module."""

    def __init__(self) -> None:
        super().__init__(self._attributes)

    @staticmethod
    def _attributes(name, module):
        from convlens.models.efficientnet_lite import MBConvBlock

        if not isinstance(module, MBConvBlock):
            return None

        def forward(self, x):
            out = x if self.expand is None else self.expand(x)
            out = self.project(self.depthwise(out))
            if self.use_residual:
                out = self.canonizer_sum(torch.stack([x, out], dim=-1))
            return out
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}


def relevance(model, x, targets, conv, dense, first=None, canonizers=()):
    """Zennit's relevance for one-hot-times-logit at ``targets`` with the given rules."""
    # Zennit's composites' shared map: activations pass, sums and average pools Norm,
    # BatchNorm pass (after merging).
    layer_map = [(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (BatchNorm, Pass()),
                 (Convolution, conv), (nn.Linear, dense)]
    if first is None:
        composite = LayerMapComposite(layer_map, canonizers=list(canonizers))
    else:
        composite = SpecialFirstLayerMapComposite(layer_map, [(AnyLinear, first)],
                                                  canonizers=list(canonizers))
    index = torch.as_tensor(targets).view(-1, 1)

    def initial(out):  # one-hot times the logit
        return torch.zeros_like(out).scatter(1, index, out.gather(1, index))

    with Gradient(model, composite) as attributor:
        _, result = attributor(x, initial)
    return result


def cases(x):
    """Our options and Zennit's (conv, dense, first) rules for each case of CASES."""
    low = x.amin((2, 3), keepdim=True).expand_as(x)
    high = x.amax((2, 3), keepdim=True).expand_as(x)
    # Our z+ and alpha-beta ignore biases (docs/architecture.md): Zennit's zero_params='bias'.
    return {
        "lrp_epsilon": ({"epsilon": 0.25}, Epsilon(0.25), Epsilon(0.25), None),
        "lrp_zplus": ({}, ZPlus(zero_params="bias"), ZPlus(zero_params="bias"), None),
        "lrp_alpha_beta": ({}, AlphaBeta(2, 1, zero_params="bias"),
                           AlphaBeta(2, 1, zero_params="bias"), None),
        "lrp_gamma": ({"gamma": 0.5}, Gamma(0.5), Gamma(0.5), None),
        "lrp_flat": ({}, Flat(), Flat(), None),
        "epsilon_plus_flat": ({"composite": "epsilon_plus_flat"}, ZPlus(zero_params="bias"),
                              Epsilon(1e-6), Flat()),
        "epsilon_gamma_box": ({"composite": "epsilon_gamma_box"}, Gamma(0.25), Epsilon(1e-6),
                              ZBox(low, high)),
    }
