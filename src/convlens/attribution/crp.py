"""Concept relevance propagation (CRP): a heatmap split into the contributions of a layer's
channels (Achtibat et al. 2023, From attribution maps to human-understandable explanations
through Concept Relevance Propagation).

One forward pass builds the relevance graph (LRP with a composite, ``relevance/``) with a
*tap* at the chosen layer: the network continues on ``a + probe``, where ``probe`` is a zero
leaf the size of the layer's output. Then

* the gradient at ``probe`` of the target logits (with the LRP initial relevance) is the
  relevance at the layer, ``R[n, c, i, j]``; stopping there costs only the top part of a
  backward pass. Its spatial sum is the channel relevance ``R_c``
  (:func:`concept_relevance`);
* the relevance of channel ``c`` at the input is the backward pass from the layer down to
  the pixels with the layer's relevance masked to channel ``c`` (the CRP condition). The
  backward pass is linear in what it starts from, so over all channels the maps sum to the
  unconditioned LRP map exactly (up to rounding) when every path from the output to the
  input passes through the layer. For a layer inside a residual branch relevance also
  bypasses it; :attr:`ConceptMaps.bypass` says how much.

Where the model has no LRP rule for some module, the same is done with plain gradients:
the relevance at the layer is gradient x activation, ``a * dS/da``, and a channel's input map
is ``x * J_c^T (dS/da)_c`` (input x gradient conditioned on the channel), whose sum over all
channels is input x gradient. :attr:`ConceptMaps.rule` says which was used. See
docs/architecture.md, "Concepts".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convlens._hooks import HookSession, evaluation_mode, gradients_enabled
from convlens.attribution.core import Problem, _prepare_x, register
from convlens.attribution.relevance.composites import RuleBook, named_composite
from convlens.attribution.relevance.methods import RulesOption, _factory
from convlens.attribution.relevance.propagation import Propagation
from convlens.attribution.targets import TargetLike
from convlens.errors import ConvlensWarning, LayerError, MethodError, UnsupportedModelError
from convlens.models.classifier import as_classifier
from convlens.models.outputs import OutputKey

_CRP = ("Achtibat et al. 2023, From attribution maps to human-understandable explanations "
        "through Concept Relevance Propagation")
RULES = ("auto", "lrp", "gradient")
GRADIENT_X_ACTIVATION = "gradient_x_activation"


@dataclass
class ConceptMaps:
    """Channel-conditional relevance of one batch.

    Attributes:
        maps: ``(N, K, H, W)``: relevance at the input pixels (colour channels summed) through
            each of ``channels[n]``, in that order.
        channels: ``(N, K)`` long: the channel of each map (the same row for every sample
            when channels were given, each sample's most relevant ones otherwise).
        relevances: ``(N, C)``: every channel's relevance at the layer, ``R_c``. Its map
            sums to ``R_c`` up to what the rules below the layer absorb (biases, epsilon).
        heatmap: ``(N, H, W)``: the unconditioned map of the same rule, colour summed.
        bypass: ``(N,)``: the share of the unconditioned map's absolute relevance that does
            not pass through the layer (0 for a layer every path crosses).
        layer: The layer's dotted name.
        rule: ``"lrp:<composite>"`` or ``"gradient_x_activation"``.
        targets: ``(N,)``: the class explained per sample.
    """

    maps: torch.Tensor
    channels: torch.Tensor
    relevances: torch.Tensor
    heatmap: torch.Tensor
    bypass: torch.Tensor
    layer: str
    rule: str
    targets: torch.Tensor


@dataclass
class _LayerGraph:
    """One forward pass with the layer tapped; everything the backward passes need."""

    x: torch.Tensor
    logits: torch.Tensor
    initial: torch.Tensor  # the output relevance (LRP) or gradient seed, one-hot per sample
    activation: torch.Tensor  # the layer's output in the graph (below the tap)
    probe: torch.Tensor  # zero leaf added at the tap: its gradient is the layer's signal
    rule: str
    layer: str

    @property
    def lrp(self) -> bool:
        return self.rule != GRADIENT_X_ACTIVATION

    def layer_signal(self, *, keep: bool = True) -> torch.Tensor:
        """What reaches the layer from the output, ``(N, C, h, w)``: the relevance (LRP) or
        the gradient (gradient x activation); the backward stops at the tap."""
        (signal,) = torch.autograd.grad(self.logits, self.probe, self.initial,
                                        retain_graph=keep)
        return signal

    def relevance(self, signal: torch.Tensor) -> torch.Tensor:
        """The layer's relevance given its :meth:`layer_signal`."""
        return signal if self.lrp else signal * self.activation.detach()

    def input_map(self, seed: torch.Tensor, *, keep: bool = True) -> torch.Tensor:
        """Relevance at the input when the backward starts at the layer from ``seed`` (a
        masked :meth:`layer_signal`)."""
        (grad,) = torch.autograd.grad(self.activation, self.x, seed, retain_graph=keep,
                                      allow_unused=True)
        grad = torch.zeros_like(self.x) if grad is None else grad
        return grad if self.lrp else grad * self.x.detach()

    def full_map(self, *, keep: bool = True) -> torch.Tensor:
        (grad,) = torch.autograd.grad(self.logits, self.x, self.initial, retain_graph=keep,
                                      allow_unused=True)
        grad = torch.zeros_like(self.x) if grad is None else grad
        return grad if self.lrp else grad * self.x.detach()


def _tap(records: list[torch.Tensor], name: str):
    def tap(activation: torch.Tensor) -> torch.Tensor:
        if records:
            raise LayerError(f"layer {name!r} runs more than once in one forward pass, so its "
                             "channels are not one set of concepts; choose a layer that runs "
                             "once")
        if activation.dim() < 2:
            raise LayerError(f"layer {name!r} outputs shape {tuple(activation.shape)}; concepts "
                             "need channels: an (N, C, ...) output")
        probe = torch.zeros_like(activation, requires_grad=True)
        records.extend((activation, probe))
        return activation + probe
    return tap


def _lrp_graph(problem: Problem, module: nn.Module, name: str, composite: str,
               rules: RulesOption, parameters: dict[str, Any], maps: bool) -> _LayerGraph:
    factory = _factory(problem, **parameters)
    book = RuleBook(named_composite(composite, factory), rules, factory)
    x = problem.x.detach().requires_grad_(maps)
    records: list[torch.Tensor] = []
    propagation = Propagation(problem.model, book, tap=(module, _tap(records, name)),
                              plain_below_tap=not maps)
    logits = propagation.run(problem.forward, x)
    _check_logits(logits, records, name)
    indices = problem.indices(logits.detach()).view(-1, 1)
    initial = torch.zeros_like(logits).scatter_(1, indices, logits.detach().gather(1, indices))
    return _LayerGraph(x, logits, initial, records[0], records[1], f"lrp:{composite}", name)


def _gradient_graph(problem: Problem, module: nn.Module, name: str, maps: bool
                    ) -> _LayerGraph:
    x = problem.x.detach().requires_grad_(maps)
    records: list[torch.Tensor] = []
    tap = _tap(records, name)
    with HookSession() as hooks:
        hooks.forward_hook(module, lambda _m, _i, out: tap(_single_tensor(out, name)))
        logits = problem.forward(x)
    _check_logits(logits, records, name)
    indices = problem.indices(logits.detach()).view(-1, 1)
    initial = torch.zeros_like(logits).scatter_(1, indices, 1.0)
    return _LayerGraph(x, logits, initial, records[0], records[1], GRADIENT_X_ACTIVATION, name)


def _single_tensor(output: Any, name: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise LayerError(f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                         "choose a layer with a single tensor output")
    return output


def _check_logits(logits: torch.Tensor, records: list[torch.Tensor], name: str) -> None:
    if logits.dim() != 2:
        raise MethodError(f"the model must return logits of shape (N, classes), got "
                          f"{tuple(logits.shape)}")
    if not records:
        raise LayerError(f"layer {name!r} did not run during the forward pass; choose a layer "
                         "that the model's forward calls (see `convlens layers`)")
    if not logits.requires_grad:
        raise LayerError(f"the target score does not depend on layer {name!r}; choose a "
                         "layer below the output")


def layer_graph(problem: Problem, *, rule: str = "auto", composite: str = "epsilon_plus_flat",
                rules: RulesOption = None, maps: bool = True, **parameters: Any) -> _LayerGraph:
    """Run the forward pass with ``problem``'s layer tapped, by LRP or by gradients.

    With ``maps=False`` only the relevance at the layer can be asked for: the layers below
    run their plain forward without a graph (no rules, no gradients), so the pass costs a
    forward and the top part of a backward.

    ``rule="auto"`` uses LRP with ``composite`` and falls back to gradient x activation
    (with a :class:`ConvlensWarning` naming the reason) when the model has a module LRP has
    no rule for; ``"lrp"`` refuses instead; ``"gradient"`` always uses gradients.
    """
    if rule not in RULES:
        raise MethodError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    (name,) = problem.layer_names()
    (module,) = problem.modules()
    if rule == "gradient":
        return _gradient_graph(problem, module, name, maps)
    try:
        return _lrp_graph(problem, module, name, composite, rules, parameters, maps)
    except UnsupportedModelError as error:
        if rule == "lrp":
            raise
        warnings.warn(f"concept relevance uses gradient x activation: {error}",
                      ConvlensWarning, stacklevel=3)
        return _gradient_graph(problem, module, name, maps)


def _channel_list(channels: int | Sequence[int] | None, count: int, name: str) -> list[int] | None:
    if channels is None:
        return None
    given = [channels] if isinstance(channels, int) else list(channels)
    if not given:
        raise MethodError("channels is empty; give channel indices, or None for each sample's "
                          "most relevant channels")
    for c in given:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < count:
            raise MethodError(f"channel {c!r} does not exist: layer {name!r} has {count} "
                              f"channels (0..{count - 1})")
    return given


def conditional_maps(graph: _LayerGraph, channels: int | Sequence[int] | None, top: int,
                     *, summary: bool = True) -> ConceptMaps:
    """The CRP maps of ``channels`` (or each sample's ``top`` most relevant) from one graph.

    One backward to the layer, one from the layer to the pixels per map, and with
    ``summary`` two more: the unconditioned map and the map through all channels (bypass).
    """
    signal = graph.layer_signal()
    n, count = signal.shape[:2]
    per_channel = _per_channel(graph.relevance(signal))
    given = _channel_list(channels, count, graph.layer)
    if given is None:
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise MethodError(f"top must be a positive integer, got {top!r}")
        chosen = per_channel.topk(min(top, count), dim=1).indices
    else:
        chosen = torch.tensor(given, device=signal.device).expand(n, -1)
    rows = torch.arange(n, device=signal.device)
    maps = []
    for k in range(chosen.shape[1]):
        mask = torch.zeros_like(per_channel)
        mask[rows, chosen[:, k]] = 1
        seed = signal * mask.view(n, count, *(1,) * (signal.dim() - 2))
        maps.append(graph.input_map(seed).sum(1))
    heatmap = torch.zeros(n, *graph.x.shape[2:], device=graph.x.device)
    bypass = torch.zeros(n, device=graph.x.device)
    if summary:
        through = graph.input_map(signal).sum(1)
        heatmap = graph.full_map(keep=False).sum(1)
        total = heatmap.abs().flatten(1).sum(1).clamp_min(torch.finfo(heatmap.dtype).tiny)
        bypass = (heatmap - through).abs().flatten(1).sum(1) / total
    return ConceptMaps(
        maps=torch.stack(maps, 1).detach(), channels=chosen.cpu(),
        relevances=per_channel.detach(), heatmap=heatmap.detach(), bypass=bypass.detach(),
        layer=graph.layer, rule=graph.rule, targets=graph.logits.new_tensor([]).long())


def _problem(model: nn.Module, layer: Any, output: OutputKey) -> tuple[Any, nn.Module, OutputKey]:
    """The Classifier, its module and the output to explain; one layer only."""
    classifier = as_classifier(model)
    module = classifier.module
    if isinstance(layer, (list, tuple)):
        raise LayerError("concepts are the channels of one layer; give one layer, not a list")
    return classifier, module, output if output is not None else classifier.output


def concept_maps(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None = None,
                 channels: int | Sequence[int] | None = None, target: TargetLike = None, *,
                 top: int = 4, rule: str = "auto", composite: str = "epsilon_plus_flat",
                 output: OutputKey = None, rules: RulesOption = None, **parameters: Any
                 ) -> ConceptMaps:
    """CRP: one relevance map per channel of ``layer``, with what produced them.

    Args:
        model: Any ``nn.Module`` returning logits, or a Classifier.
        x: Preprocessed batch ``(N, C, H, W)``.
        layer: The layer whose channels are the concepts (default: the model's default
            layer, the last with a spatial output).
        channels: Channel indices (the same for every sample), or ``None`` for each
            sample's ``top`` most relevant channels, most relevant first.
        target: As for :func:`convlens.attribute`.
        rule: ``"auto"`` (LRP where the model has rules, gradient x activation otherwise),
            ``"lrp"`` or ``"gradient"``.
        composite: The LRP composite (as for the ``lrp`` method); ``epsilon``, ``gamma``,
            ``alpha``, ``beta``, ``low``, ``high`` and ``rules`` parametrise it.

    Returns:
        A :class:`ConceptMaps` in the model's dtype; ``maps`` sum over all channels to
        ``heatmap`` where ``bypass`` is 0.
    """
    classifier, module, output = _problem(model, layer, output)
    with evaluation_mode(module), gradients_enabled():
        x = _prepare_x(x, module)
        problem = Problem(module, x, target, classifier.labels, layer, output, classifier)
        graph = layer_graph(problem, rule=rule, composite=composite, rules=rules,
                            **_lrp_parameters(parameters))
        result = conditional_maps(graph, channels, top)
        result.targets = problem.indices().cpu()
    return result


def concept_relevance(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None = None,
                      target: TargetLike = None, *, rule: str = "auto",
                      composite: str = "epsilon_plus_flat", spatial: bool = False,
                      output: OutputKey = None, rules: RulesOption = None, **parameters: Any
                      ) -> torch.Tensor:
    """Every channel's relevance at ``layer``: ``(N, C)`` (``(N, C, h, w)`` with ``spatial``).

    One forward pass and the top part of one backward pass (from the logits to the layer)
    per call: the channel relevances ``R_c`` of CRP without any map. ``R_c`` is the sum of
    channel ``c``'s map from :func:`concept_maps` (same rule and composite) up to what the
    rules below the layer absorb. In the model's dtype.
    """
    relevance, _rule = layer_relevance(model, x, layer, target, rule=rule, composite=composite,
                                       output=output, rules=rules, **parameters)
    return relevance if spatial else _per_channel(relevance)


def layer_relevance(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None = None,
                    target: TargetLike = None, *, rule: str = "auto",
                    composite: str = "epsilon_plus_flat", output: OutputKey = None,
                    rules: RulesOption = None, **parameters: Any) -> tuple[torch.Tensor, str]:
    """:func:`concept_relevance` with ``spatial=True``, and the rule that produced it
    (``"lrp:<composite>"`` or ``"gradient_x_activation"``: ``"auto"`` resolved), for callers
    that must say which was used (the audit's concepts)."""
    classifier, module, output = _problem(model, layer, output)
    with evaluation_mode(module), gradients_enabled():
        x = _prepare_x(x, module)
        problem = Problem(module, x, target, classifier.labels, layer, output, classifier)
        graph = layer_graph(problem, rule=rule, composite=composite, rules=rules, maps=False,
                            **_lrp_parameters(parameters))
        relevance = graph.relevance(graph.layer_signal(keep=False)).detach()
    return relevance, graph.rule


def _per_channel(relevance: torch.Tensor) -> torch.Tensor:
    """``(N, C, ...)`` -> ``(N, C)``: each channel's relevance summed over its positions."""
    return relevance.flatten(2).sum(2) if relevance.dim() > 2 else relevance


_LRP_PARAMETERS = ("epsilon", "gamma", "alpha", "beta", "low", "high")


def _lrp_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(parameters) - set(_LRP_PARAMETERS))
    if unknown:
        raise MethodError(f"unknown option {unknown[0]!r}; the LRP options are "
                          f"{', '.join(_LRP_PARAMETERS)}")
    defaults = {"epsilon": 1e-6, "gamma": 0.25, "alpha": 2.0, "beta": 1.0}
    return {**defaults, **parameters}


@register("crp", family="relevance", space="concepts", signed=True, reference=_CRP,
          summary="Concept relevance propagation: the LRP map split into the contributions "
                  "of one layer's channels, a map per channel")
def crp(problem: Problem, *, channels: int | Sequence[int] | None = None, top: int = 4,
        rule: str = "auto", composite: str = "epsilon_plus_flat", epsilon: float = 1e-6,
        gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0, low: object = None,
        high: object = None, rules: RulesOption = None) -> torch.Tensor:
    """CRP maps ``(N, K, H, W)`` of ``channels`` of ``layer``, or of each sample's ``top``
    most relevant channels (see :func:`concept_maps` for the channels and the rule used)."""
    if isinstance(problem.layer, (list, tuple)):
        raise LayerError("crp explains the channels of one layer; give one layer")
    graph = layer_graph(problem, rule=rule, composite=composite, rules=rules, epsilon=epsilon,
                        gamma=gamma, alpha=alpha, beta=beta, low=low, high=high)
    return conditional_maps(graph, channels, top, summary=False).maps
