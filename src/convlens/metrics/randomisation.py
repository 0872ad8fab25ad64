"""Randomisation tests: does the explanation depend on what the model learned?

Model-parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim 2018, "Sanity
Checks for Saliency Maps", NeurIPS): re-initialise the model's units cascading from the
output down, and after each stage compare the map of the randomised model with the trained
model's map (Spearman rank correlation of absolute 2-D maps, as in the paper). A method that
explains the model must change: low correlation passes; a map that stays the same (guided
backprop in the paper) mostly shows the input.

The cascade follows the order in which units *run* (found with one forward pass), from the
output down; Quantus's ``MPRT`` walks ``named_modules()`` in reverse, the order modules were
*registered*, which differs whenever a model defines its layers in another order than it
calls them (the tests build such a model). Units are, by default, the model's top-level
children, with containers of blocks (``blocks``, ``layer1``) split into their blocks;
parameter-free units are skipped. Re-initialisation calls each module's own
``reset_parameters()`` (BatchNorm: identity weights and fresh running statistics) under a
fixed seed; a module with parameters but no ``reset_parameters`` has them redrawn from a
normal distribution with the trained parameter's standard deviation. All of this happens on
a deep copy: the user's model is never changed. The explained class stays the trained
model's.

Random logit (Sixt, Granz, Landgraf 2020, "When Explanations Lie: Why Many Modified BP
Attributions Fail", ICML): the map for the explained class should differ from the map for
a random other class; the score is their SSIM (2-D, 7 x 7 window, as
``skimage.metrics.structural_similarity``; Quantus computes it on flattened maps). Lower is
better.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import HookSession, evaluation_mode
from convlens.attribution.core import attribute, get_method
from convlens.attribution.targets import TargetLike
from convlens.metrics.core import (
    MetricError,
    Scores,
    check_choice,
    finish,
    pearson,
    prepare_x,
    register_metric,
    resolve,
    spearman,
    unwrap,
)

ADEBAYO = ("Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. Sanity Checks for Saliency Maps. "
           "NeurIPS 2018")
SIXT = ("Sixt, Granz, Landgraf. When Explanations Lie: Why Many Modified BP Attributions Fail. "
        "ICML 2020")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def presentation_maps(method: str, attribution: torch.Tensor, size: Sequence[int],
                      absolute: bool = True) -> torch.Tensor:
    """``(N, H, W)`` float64: the map as presentation reads it (:meth:`Method.to_map`:
    channels reduced, offset removed), upsampled to ``size``, |.| when ``absolute``."""
    maps = get_method(method).to_map(attribution.detach().double(), size)
    return maps.abs() if absolute else maps


def default_units(module: nn.Module) -> list[str]:
    """Top-level children; a container whose children have children is split into them."""
    units = []
    for name, child in module.named_children():
        parts = list(child.named_children())
        if isinstance(child, _CONTAINERS) and any(list(c.children()) for _, c in parts):
            units += [f"{name}.{sub}" for sub, _ in parts]
        else:
            units.append(name)
    return units


def execution_order(module: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[str]:
    """``names`` sorted by when each module first runs in a forward pass of ``x[:1]``."""
    mapping = dict(module.named_modules())
    missing = [n for n in names if n not in mapping]
    if missing:
        raise MetricError(f"unit {missing[0]!r} is not a module of the model; valid names are "
                          "those of `convlens layers`")
    first: dict[str, int] = {}
    with HookSession() as hooks, evaluation_mode(module), torch.no_grad():
        for name in names:
            def hook(_m: nn.Module, _i: Any, name: str = name) -> None:
                first.setdefault(name, len(first))
            hooks.forward_pre_hook(mapping[name], hook)
        module(x[:1])
    return sorted((n for n in names if n in first), key=first.__getitem__)


def cascade(module: nn.Module, x: torch.Tensor, units: Sequence[str] | None) -> list[str]:
    """Units with parameters, from the output down, in the order they run (reversed)."""
    names = default_units(module) if units is None else list(units)
    mapping = dict(module.named_modules())
    with_params = [n for n in names if n in mapping and any(
        True for _ in mapping[n].parameters())] + [n for n in names if n not in mapping]
    return list(reversed(execution_order(module, x, with_params)))


def reinitialise(unit: nn.Module) -> None:
    """Re-draw every parameter of ``unit`` (see the module docstring); uses torch's RNG."""
    with torch.no_grad():
        for sub in unit.modules():
            own = list(sub.parameters(recurse=False))
            if not own:
                continue
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            else:
                for p in own:
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 else 1.0)


def _copy(module: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(module)
    except Exception as error:  # noqa: BLE001 - any failure means we cannot work safely
        raise MetricError(f"the randomisation test works on a copy of the model, and this model "
                          f"cannot be copied ({type(error).__name__}: {error}); it is never "
                          "modified in place") from error


def _similarity(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ssim":
        return ssim(a, b)
    a, b = a.flatten(1), b.flatten(1)
    return spearman(a, b) if kind == "spearman" else pearson(a, b)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-pair SSIM of ``(N, H, W)`` maps as ``skimage.metrics.structural_similarity``.

    Uniform window, sample covariance, K1 = 0.01, K2 = 0.03, data range = the pair's joint
    max - min (as Quantus), mean over the window positions inside the map.
    """
    a, b = a.double()[:, None], b.double()[:, None]
    joint = torch.cat([a.flatten(1), b.flatten(1)], 1)
    data_range = (joint.amax(1) - joint.amin(1)).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    ua, ub = pool(a), pool(b)
    norm = window * window / (window * window - 1)
    va = norm * (pool(a * a) - ua * ua)
    vb = norm * (pool(b * b) - ub * ub)
    vab = norm * (pool(a * b) - ua * ub)
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (va + vb + c2))
    return s.flatten(1).mean(1)


@register_metric("randomisation", family="randomisation", needs="method", reference=ADEBAYO,
                 summary="rank correlation of the map with the map of a cascadingly "
                         "re-initialised model, mean over stages (lower is better)",
                 higher_is_better=False)
def model_randomisation(model: nn.Module, x: torch.Tensor, method: str,
                        target: TargetLike = None, *, units: Sequence[str] | None = None,
                        stages: int | Sequence[str] | None = None, similarity: str = "spearman",
                        absolute: bool = True, seed: int = 0, layer: Any = None,
                        method_options: Mapping[str, Any] | None = None,
                        maps: torch.Tensor | None = None) -> Scores:
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    Args:
        model: ``nn.Module`` or Classifier (never modified: a copy is randomised).
        x: Preprocessed images ``(N, C, H, W)``.
        method: The attribution method's registry name.
        target: The explained class (the trained model's; fixed through the stages).
        units: Module names to randomise (default: see :func:`default_units`); ordered by
            execution, the last to run first.
        stages: Stop after this many units (int, measuring after each), or a list of unit
            names: the cascade runs down to the last of them and is measured only after
            these (earlier units are still randomised, cumulatively).
        similarity: ``"spearman"`` (the paper), ``"pearson"`` or ``"ssim"``.
        absolute: Compare absolute maps (the paper's main figure).
        seed: Seed of the re-initialisation.
        layer: The method's layer.
        method_options: The method's options.
        maps: The method's maps on the trained model, when already computed.

    Returns:
        Scores whose ``stages`` hold the per-image similarity after each cumulative stage
        (names ``"classifier"``, ``"+head"``, ...) and whose values are their mean.
    """
    check_choice("similarity", similarity, ("spearman", "pearson", "ssim"))
    options = dict(units=None if units is None else list(units), stages=stages,
                   similarity=similarity, absolute=absolute, seed=seed)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    _, classes = resolve(module, x, target, labels)
    order = cascade(module, x, units)
    report: set[str] | None = None  # None: a similarity after every stage
    if isinstance(stages, int) and not isinstance(stages, bool):
        if stages < 1:
            raise MetricError(f"option stages must be >= 1, got {stages}")
        order = order[:stages]
    elif stages is not None:
        unknown = [s for s in stages if s not in order]
        if unknown:
            raise MetricError(f"stage {unknown[0]!r} is not a unit of the cascade; units from "
                              f"the output down: {', '.join(order)}")
        report = set(stages)
        order = order[: max(order.index(s) for s in stages) + 1]
    method_options = dict(method_options or {})
    size = x.shape[-2:]

    def maps_of(net: nn.Module) -> torch.Tensor:
        a = attribute(net, x, method, target=classes, layer=layer, **method_options)
        return presentation_maps(method, a, size, absolute)

    reference = maps_of(module) if maps is None else presentation_maps(method, maps, size,
                                                                        absolute)
    if not order:
        raise MetricError("the model has no unit with parameters to randomise")
    randomised = _copy(module)
    mapping = dict(randomised.named_modules())
    devices = [x.device] if x.device.type == "cuda" else []
    table: dict[str, np.ndarray] = {}
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for index, unit in enumerate(order):
            reinitialise(mapping[unit])
            if report is not None and unit not in report:
                continue  # randomised (cumulative), but not measured here
            current = maps_of(randomised)
            rho = _similarity(reference, current, similarity).cpu().numpy()
            # A randomised map left constant has no ranking in common with the trained one:
            # counted as 0 (no similarity), as benchmarks/sanity_checks.py did.
            flat = current.flatten(1)
            rho[(flat.amax(1) == flat.amin(1)).cpu().numpy()] = 0.0
            table[("+" if index else "") + unit] = rho
    del randomised
    values = np.stack(list(table.values())).mean(0)
    flat = reference.flatten(1)
    undefined = ["constant map of the trained model: nothing to compare" if c else None
                 for c in (flat.amax(1) == flat.amin(1)).tolist()]
    return finish("randomisation", torch.from_numpy(values), undefined, options, stages=table)


@register_metric("random_logit", family="randomisation", needs="method", reference=SIXT,
                 summary="SSIM between the map of the explained class and of a random other "
                         "class (lower is better)", higher_is_better=False)
def random_logit(model: nn.Module, x: torch.Tensor, method: str, target: TargetLike = None, *,
                 similarity: str = "ssim", absolute: bool = False, seed: int = 0,
                 layer: Any = None, method_options: Mapping[str, Any] | None = None,
                 maps: torch.Tensor | None = None) -> Scores:
    """Random-logit test (Sixt et al. 2020).

    Args:
        model: ``nn.Module`` or Classifier.
        x: Preprocessed images ``(N, C, H, W)``.
        method: The attribution method's registry name.
        target: The explained class.
        similarity: ``"ssim"`` (the paper), ``"spearman"`` or ``"pearson"``.
        absolute: Compare absolute maps.
        seed: Seed of the random other class (uniform over the other classes).
        layer: The method's layer.
        method_options: The method's options.
        maps: The method's maps for the explained class, when already computed.
    """
    check_choice("similarity", similarity, ("ssim", "spearman", "pearson"))
    options = dict(similarity=similarity, absolute=absolute, seed=seed)
    module, labels = unwrap(model)
    x = prepare_x(module, x)
    logits, classes = resolve(module, x, target, labels)
    count = logits.shape[1]
    if count < 2:
        raise MetricError("the random-logit test needs a model with at least 2 classes")
    generator = torch.Generator().manual_seed(int(seed))
    draw = torch.randint(0, count - 1, (x.shape[0],), generator=generator).to(x.device)
    other = draw + (draw >= classes).long()  # uniform over the classes != target
    method_options = dict(method_options or {})
    size = x.shape[-2:]
    if maps is None:
        maps = attribute(module, x, method, target=classes, layer=layer, **method_options)
    mine = presentation_maps(method, maps, size, absolute)
    theirs = presentation_maps(method, attribute(module, x, method, target=other, layer=layer,
                                                 **method_options), size, absolute)
    values = _similarity(mine, theirs, similarity)
    undefined = [None if bool(torch.isfinite(v)) else "constant map: similarity undefined"
                 for v in values]
    return finish("random_logit", values, undefined, options)
