"""The registered LRP methods: one rule everywhere, or a composite.

Every method starts from the target's logit (the one-hot logit vector is the relevance at
the output), and returns the relevance at the input pixels, shaped like ``x`` and signed.
Relevance sums over colour channels at presentation. Every method accepts ``rules``:
``{dotted module name or module type: rule name}`` overriding the rule of those modules for
this call (see :func:`~convlens.attribution.relevance.composites.register_rule` for the
names and the permanent, per-type form).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from convlens.attribution.core import Problem, register
from convlens.attribution.relevance import rules as R
from convlens.attribution.relevance.composites import Composite, RuleBook, named_composite
from convlens.attribution.relevance.propagation import Propagation
from convlens.errors import MethodError, TargetError, UnsupportedModelError
from convlens.models.tokens import attention_modules

_BACH = ("Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by "
         "Layer-Wise Relevance Propagation")
_OVERVIEW = "Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview"
_DTD = "Montavon et al. 2017, Explaining Nonlinear Classification Decisions with Deep Taylor " \
       "Decomposition"

RulesOption = Mapping[str | type, str | R.LayerRule] | None


def propagate(problem: Problem, book: RuleBook) -> torch.Tensor:
    """Relevance at the input for each sample's target, given the rules of every module.

    One forward pass (with the rules' modified layers built alongside the real ones) and
    one backward pass from the target logits to the input.
    """
    x = problem.x.detach().requires_grad_(True)
    try:
        logits = Propagation(problem.model, book).run(problem.forward, x)
    except UnsupportedModelError as error:
        attention = attention_modules(problem.model)
        if attention:  # the call that failed is a detail; the model kind is the reason
            raise UnsupportedModelError(_attention_message(problem.model, attention)) from error
        raise
    if logits.dim() != 2:
        raise TargetError(
            f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}"
        )
    indices = problem.indices(logits.detach()).view(-1, 1)
    initial = torch.zeros_like(logits).scatter_(1, indices, logits.detach().gather(1, indices))
    if not logits.requires_grad:
        raise UnsupportedModelError(
            "the model's logits do not depend on the input through autograd (a detach or "
            "no_grad inside forward?), so no relevance can flow back to the pixels"
        )
    (relevance,) = torch.autograd.grad(logits, x, grad_outputs=initial, allow_unused=True)
    return torch.zeros_like(x) if relevance is None else relevance


# docs/architecture.md, "Token models": what works on attention models
_TOKEN_CAMS = ("gradcam", "hirescam", "xgradcam", "layercam", "gradcam_plus_plus", "eigencam",
               "scorecam")
_MODEL_AGNOSTIC = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad",
                   "vargrad", "gradient_shap", "occlusion", "rise", "shapley_sampling",
                   "kernel_shap", "lime", "feature_ablation")


def _attention_message(model: torch.nn.Module, attention: list[tuple[str, torch.nn.Module]]
                       ) -> str:
    """LRP's refusal of an attention model, in terms its user can act on (README, "Vision
    transformers"): no rule for attention, and the methods that work there instead."""
    name, module = attention[-1]
    more = f" and {len(attention) - 1} more" if len(attention) > 1 else ""
    block = name.rpartition(".")[0]
    parent = model.get_submodule(block) if block else model
    layer = f"{block}.norm1" if block and hasattr(parent, "norm1") else "the input of its block"
    return (f"LRP has no rule for attention, and {type(model).__name__} computes attention "
            f"('{name}' ({type(module).__name__}){more}): relevance cannot be split through "
            "its products of activations (queries x keys, attention weights x values) and "
            f"token reshapes. On attention models use a CAM on the tokens of the last "
            f"attention's input ({', '.join(_TOKEN_CAMS)} with layer='{layer}', CLI: --layer) "
            f"or a model-agnostic method ({', '.join(_MODEL_AGNOSTIC)})")


def input_bounds(x: torch.Tensor, low: object, high: object
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the input domain for the z-box rule.

    Defaults (``None``): each sample's own minimum and maximum per channel, shape
    ``(N, C, 1, 1)``: for a normalised photo these are close to the normalised values of
    black and white, ``(0 - mean) / std`` and ``(1 - mean) / std``, which you may pass
    instead (numbers, per-channel sequences or tensors broadcastable to ``x``).
    """
    dims = tuple(range(2, x.dim()))
    bounds = []
    for name, given, default in (("low", low, x.amin(dim=dims, keepdim=True)),
                                 ("high", high, x.amax(dim=dims, keepdim=True))):
        if given is None:
            bounds.append(default)
            continue
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            bounds.append(torch.full((1,) * x.dim(), float(given), dtype=x.dtype,
                                     device=x.device))
            continue
        if isinstance(given, Sequence) and not isinstance(given, str):
            given = torch.tensor([float(v) for v in given]).view(1, -1, *(1,) * len(dims))
        if not isinstance(given, torch.Tensor):
            raise MethodError(f"{name} must be None, a number, a sequence or a tensor, "
                              f"got {type(given).__name__}")
        given = given.to(device=x.device, dtype=x.dtype)
        try:
            torch.broadcast_shapes(given.shape, x.shape)
        except RuntimeError:
            raise MethodError(f"{name} of shape {tuple(given.shape)} does not broadcast to "
                              f"x's shape {tuple(x.shape)}") from None
        bounds.append(given)
    low_t, high_t = bounds
    if bool((low_t > high_t).any()):
        raise MethodError("low must not exceed high for the z-box rule")
    return low_t, high_t


def _factory(problem: Problem, *, low: object = None, high: object = None, **parameters: float
             ) -> Callable[[str], R.LayerRule | str]:
    """Build a registered rule by name with this call's parameters (epsilon, gamma...).

    The z-box bounds are computed from the input only when a rule reads them, once.
    """
    bounds: dict[str, torch.Tensor] = {}

    def factory(name: str) -> R.LayerRule | str:
        entry = R.rule_entry(name)
        options: dict[str, object] = dict(parameters)
        if "low" in entry.parameters or "high" in entry.parameters:
            if not bounds:
                bounds["low"], bounds["high"] = input_bounds(problem.x, low, high)
            options.update(bounds)
        return entry.make(options)

    return factory


def _everywhere(problem: Problem, rule: str, rules: RulesOption, **parameters: object
                ) -> torch.Tensor:
    """Relevance with one registered rule on every Conv/Linear layer."""
    factory = _factory(problem, **parameters)
    layer_rule = factory(rule)
    layout = Composite(layer_rule.name, conv=layer_rule, dense=layer_rule)
    return propagate(problem, RuleBook(layout, rules, factory))


@register("lrp_epsilon", family="relevance", signed=True, reference=f"{_BACH}; {_OVERVIEW}",
          summary="LRP-epsilon on every layer: relevance in proportion to contributions, "
                  "epsilon absorbs the weak and contradictory ones")
def lrp_epsilon(problem: Problem, *, epsilon: float = 0.25, rules: RulesOption = None
                ) -> torch.Tensor:
    """LRP-epsilon on every Conv/Linear layer.

    ``epsilon`` defaults to 0.25, the value of Montavon et al. 2019 (sec. 10.2) for middle
    layers, so that the method differs from input x gradient, which is its limit
    ``epsilon -> 0`` in a ReLU network (Zennit's ``Epsilon`` defaults to 1e-6). It is an
    absolute value, in the units of the pre-activations.
    """
    return _everywhere(problem, "epsilon", rules, epsilon=epsilon)


@register("lrp_zplus", family="relevance", signed=True, reference=f"{_DTD}; {_OVERVIEW}",
          summary="LRP-z+ on every layer: only positive contributions carry relevance")
def lrp_zplus(problem: Problem, *, rules: RulesOption = None) -> torch.Tensor:
    """LRP-z+ (deep Taylor decomposition for ReLU layers) on every Conv/Linear layer.

    Only contributions ``x_i w_ij > 0`` count, biases are ignored (docs/architecture.md). The map
    is non-negative where the inputs of the first layer are non-negative.
    """
    return _everywhere(problem, "zplus", rules)


@register("lrp_alpha_beta", family="relevance", signed=True, reference=f"{_BACH}; {_OVERVIEW}",
          summary="LRP-alpha-beta on every layer: positive contributions weighted alpha, "
                  "negative ones beta")
def lrp_alpha_beta(problem: Problem, *, alpha: float = 2.0, beta: float = 1.0,
                   rules: RulesOption = None) -> torch.Tensor:
    """LRP-alpha-beta on every Conv/Linear layer; ``alpha - beta`` must be 1."""
    return _everywhere(problem, "alpha_beta", rules, alpha=alpha, beta=beta)


@register("lrp_gamma", family="relevance", signed=True, reference=_OVERVIEW,
          summary="LRP-gamma on every layer: positive weights boosted by gamma")
def lrp_gamma(problem: Problem, *, gamma: float = 0.25, rules: RulesOption = None
              ) -> torch.Tensor:
    """LRP-gamma (generalised to signed inputs as in Zennit) on every Conv/Linear layer."""
    return _everywhere(problem, "gamma", rules, gamma=gamma)


@register("lrp_flat", family="relevance", signed=True,
          reference="Lapuschkin et al. 2019, Unmasking Clever Hans Predictors",
          summary="LRP-flat on every layer: the logit spread uniformly over receptive "
                  "fields (an input-independent baseline)")
def lrp_flat(problem: Problem, *, rules: RulesOption = None) -> torch.Tensor:
    """LRP-flat on every Conv/Linear layer.

    Weights and inputs count as ones, so the map shows how the architecture spreads the
    logit over the pixels, whatever the image: a baseline to compare other maps with. The
    flat rule is meant for the first layer; ``lrp`` with ``epsilon_plus_flat`` uses it so.
    """
    return _everywhere(problem, "flat", rules)


@register("lrp", family="relevance", signed=True,
          reference="Kohlbrenner et al. 2020, Towards Best Practice in Explaining Neural "
                    f"Network Decisions with LRP; {_OVERVIEW}",
          summary="LRP with a composite: a rule per layer kind (default: flat first layer, "
                  "z+ convolutions, epsilon dense layers)")
def lrp(problem: Problem, *, composite: str = "epsilon_plus_flat", epsilon: float = 1e-6,
        gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0, low: object = None,
        high: object = None, rules: RulesOption = None) -> torch.Tensor:
    """LRP with a composite of rules (Zennit's names and layouts).

    Composites: ``epsilon_plus_flat`` (default), ``epsilon_gamma_box`` (z-box first layer
    with bounds ``low``/``high``, gamma convolutions), ``epsilon_plus``,
    ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``. ``epsilon`` is the dense
    layers' stabiliser (default 1e-6, Zennit's, which conserves relevance in the
    classifier); ``gamma``, ``alpha`` and ``beta`` parametrise the convolution rules.

    ``low``/``high`` default to each sample's per-channel minimum and maximum (see
    :func:`input_bounds`); with a Classifier pass the normalised black and white values,
    ``low=[(0 - m) / s for m, s in zip(mean, std)]`` and likewise ``high`` with 1.

    The first layer is the first Conv or Linear layer that runs. Padding in front of it
    (e.g. a separate ``SamePad2d``) is part of its input: the flat and z-box rules count
    padded pixels as inputs, and their share is dropped when the padding is cropped off.
    """
    factory = _factory(problem, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta,
                       low=low, high=high)
    layout = named_composite(composite, factory)
    return propagate(problem, RuleBook(layout, rules, factory))
