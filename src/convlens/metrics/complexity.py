"""How concentrated a map is: complexity (Bhatt, Weller, Moura 2020, IJCAI: the entropy of the
fractional contributions ``|a_i| / sum_j |a_j|``; lower is simpler) and sparseness (Chalasani,
Chen, Chowdhury, Wu, Jha 2020, "Concise Explanations of Neural Networks using Adversarial
Training", ICML: the Gini index of ``|a|``; 0 for a uniform map, towards 1 when the mass sits
on a few pixels; higher is sparser). Both on the 2-D map (channels summed), like Quantus's
``Complexity`` and ``Sparseness`` given a one-channel map (Quantus adds 1e-7 before the Gini
index and 1e-12 inside the logarithm; we don't: an all-zero map has neither and is reported
as such).

The model is not run: these functions take ``model`` and ``x`` only to check the maps' shape.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.targets import TargetLike
from convlens.metrics.core import Scores, check_input, finish, pixel_maps, register_metric

BHATT = ("Bhatt, Weller, Moura. Evaluating and Aggregating Feature-based Model Explanations. "
         "IJCAI 2020")
CHALASANI = ("Chalasani, Chen, Chowdhury, Wu, Jha. Concise Explanations of Neural Networks "
             "using Adversarial Training. ICML 2020")
ZERO = "all-zero map: no distribution of relevance"


def _absolute(x: torch.Tensor, maps: object) -> torch.Tensor:
    return pixel_maps(maps, check_input(x)).flatten(1).double().abs()


@register_metric("complexity", family="complexity", needs="maps", reference=BHATT,
                 summary="entropy of the fractional contribution of each pixel (lower is "
                         "simpler)", higher_is_better=False)
def complexity(model: nn.Module | None, x: torch.Tensor, maps: object,
               target: TargetLike = None) -> Scores:
    """Entropy of ``|a| / sum |a|`` per image (natural log; 0 log 0 = 0)."""
    a = _absolute(x, maps)
    total = a.sum(1, keepdim=True)
    p = a / total.clamp_min(1e-300)
    values = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))).sum(1)
    undefined = [ZERO if float(t) == 0 else None for t in total[:, 0]]
    return finish("complexity", values, undefined, {})


@register_metric("sparseness", family="complexity", needs="maps", reference=CHALASANI,
                 summary="Gini index of the absolute map (higher is sparser)",
                 higher_is_better=True)
def sparseness(model: nn.Module | None, x: torch.Tensor, maps: object,
               target: TargetLike = None) -> Scores:
    """Gini index ``sum_i (2 i - n - 1) a_(i) / (n sum a)`` of the sorted ``|a|``."""
    a = torch.sort(_absolute(x, maps), dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    total = a.sum(1)
    values = ((2 * i - n - 1) * a).sum(1) / (n * total.clamp_min(1e-300))
    undefined = [ZERO if float(t) == 0 else None for t in total]
    return finish("sparseness", values, undefined, {})
