"""Which rule each module gets: composites, user overrides and the built-in module table.

A *composite* (Kohlbrenner et al. 2020; Montavon et al. 2019, sec. 10.2) assigns rules by
layer kind: one for the first layer (the one that sees pixels), one for convolutions, one for
dense layers. Everything else follows fixed conventions (docs/architecture.md): activations pass
relevance unchanged, average pooling and sums redistribute in proportion to their inputs
(the ``norm`` rule), max pooling gives it to the winner (the module's own gradient),
padding and reshapes route it like their gradient, BatchNorm is merged into the layer whose
output it normalises (``canonizers.py``).

Modules outside this table are handled in one of two ways. A module *without* parameters
or buffers is looked into: the engine intercepts the torch functions its ``forward`` calls
and applies the same conventions to them (so ``SamePad2d``, ``F.relu`` or ``x + identity``
need no registration), refusing any function it has no rule for. A module *with* parameters
that is not a container is refused outright (UnsupportedModelError) unless given a rule,
with ``rules={name_or_type: rule}`` per call or :func:`register_rule` for a type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from convlens.attribution.relevance import rules as R
from convlens.errors import MethodError, unknown_choice
from convlens.models.projection import ConceptProjection

#: A module's rule: a layer rule, PASS, GRADIENT, or BATCHNORM (merge, else ``norm``).
BATCHNORM = "batchnorm"
ModuleRule = R.LayerRule | str

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DENSE = (nn.Linear,)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU,
                nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Softplus, nn.PReLU)
_ROUTING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity,
            nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
            nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
            nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
            nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
            nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SHIFTS = (ConceptProjection,)  # a corrected model's projection (convlens 12): relevance passes

#: Module types whose output is never negative (lets z+/alpha-beta/gamma skip a pass).
NONNEGATIVE = (nn.ReLU, nn.ReLU6)
#: Routing modules that keep a non-negative input non-negative.
SIGN_PRESERVING = tuple(t for t in _ROUTING if not issubclass(
    t, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)))

_REGISTERED: dict[type, ModuleRule] = {}


def register_rule(module_type: type, rule: ModuleRule | None) -> None:
    """Give every module of ``module_type`` a rule in all later LRP calls.

    Args:
        module_type: An ``nn.Module`` subclass (matched with ``isinstance``).
        rule: ``"pass"`` (relevance passes through unchanged; input and output shapes must
            match), ``"gradient"`` (the module's own backward routes relevance, as for max
            pooling), ``"epsilon"``/``"norm"`` (the module is a linear map: relevance in
            proportion to each input's contribution), any other rule name of
            :data:`~convlens.attribution.relevance.rules.RULE_NAMES` for Conv/Linear types,
            a :class:`~convlens.attribution.relevance.rules.LayerRule`, or None to remove
            the registration.

    Example:
        >>> register_rule(MySwish, "pass")                        # doctest: +SKIP
        >>> attribute(model, x, "lrp")                            # doctest: +SKIP
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise MethodError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if rule is None:
        _REGISTERED.pop(module_type, None)
        return
    _check_rule_spec(rule, f"register_rule({module_type.__name__}, ...)")
    _REGISTERED[module_type] = rule


def _check_rule_spec(rule: object, where: str) -> None:
    if isinstance(rule, R.LayerRule):
        return
    try:
        R.rule_entry(rule)
    except MethodError as error:
        raise MethodError(f"{where}: {error}") from None


@dataclass(frozen=True)
class Composite:
    """Rules by layer kind.

    Attributes:
        name: Registry name, e.g. ``"epsilon_plus_flat"``.
        conv: Rule of convolutions.
        dense: Rule of linear (fully connected) layers.
        first: Rule of the first Conv/Linear layer to run (the one that sees pixels), or
            None for no special first layer.
    """

    name: str
    conv: R.LayerRule
    dense: R.LayerRule
    first: R.LayerRule | None = None


@dataclass(frozen=True)
class CompositeEntry:
    """A registered composite: rule names by layer kind, looked up in the rule registry.

    Attributes:
        name: What users pass as ``composite=``.
        conv: Rule name for convolutions.
        dense: Rule name for linear layers.
        first: Rule name for the first Conv/Linear layer, or None.
        reference: Where the layout comes from.
    """

    name: str
    conv: str
    dense: str
    first: str | None
    reference: str


_COMPOSITES: dict[str, CompositeEntry] = {}
_KOHLBRENNER = ("Kohlbrenner et al. 2020, Towards Best Practice in Explaining Neural Network "
                "Decisions with LRP")
_OVERVIEW = "Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview, sec. 10.2"


def register_composite(name: str, *, conv: str, dense: str, first: str | None = None,
                       reference: str) -> CompositeEntry:
    """Register a composite; its rules must be registered rules (checked here, once)."""
    for rule in (conv, dense, first):
        if rule is not None:
            R.rule_entry(rule)
    entry = CompositeEntry(name, conv, dense, first, reference)
    _COMPOSITES[name] = entry
    return entry


# Zennit's names and layouts.
register_composite("epsilon_plus_flat", conv="zplus", dense="epsilon", first="flat",
                   reference=_KOHLBRENNER)
register_composite("epsilon_gamma_box", conv="gamma", dense="epsilon", first="zbox",
                   reference=_OVERVIEW)
register_composite("epsilon_plus", conv="zplus", dense="epsilon", reference=_OVERVIEW)
register_composite("epsilon_alpha2_beta1", conv="alpha_beta", dense="epsilon",
                   reference=_KOHLBRENNER)
register_composite("epsilon_alpha2_beta1_flat", conv="alpha_beta", dense="epsilon",
                   first="flat", reference=_KOHLBRENNER)

#: Composite names (the registry's keys, for display).
COMPOSITES = tuple(_COMPOSITES)  # the composites of this file; composite_names(): all


def composite_names() -> tuple[str, ...]:
    """Every registered composite name, in registration order."""
    return tuple(_COMPOSITES)


def composite_entry(name: object) -> CompositeEntry:
    """The registered composite ``name``; an unknown name raises MethodError listing all."""
    if not isinstance(name, str) or name not in _COMPOSITES:
        raise MethodError(unknown_choice("composite", name, _COMPOSITES))
    return _COMPOSITES[name]


def named_composite(name: str, factory: Callable[[str], ModuleRule] | None = None,
                    **options: Any) -> Composite:
    """A registered composite with its rules built.

    * ``epsilon_plus_flat``: flat first layer, z+ convolutions, epsilon dense layers
      (Kohlbrenner et al. 2020's recommendation for VGG-like nets).
    * ``epsilon_gamma_box``: z-box first layer (bounds ``low``/``high``), gamma convolutions,
      epsilon dense layers (Montavon et al. 2019, sec. 10.2).
    * ``epsilon_plus``, ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``: the
      same pattern with z+ or alpha-beta convolutions.

    Args:
        name: A registered composite name.
        factory: Builds a rule from its name (a method passes one that knows the call's
            options and the input's bounds); default: the registry with ``options``.
        **options: Rule parameters (``epsilon``, ``gamma``, ``alpha``, ``beta``, ``low``,
            ``high``) when no factory is given.
    """
    entry = composite_entry(name)
    if factory is None:
        def factory(rule: str) -> ModuleRule:
            return R.rule_entry(rule).make(options)
    return Composite(name, factory(entry.conv), factory(entry.dense),
                     None if entry.first is None else factory(entry.first))


class RuleBook:
    """Resolves the rule of each module: per-call overrides, registered types, composite,
    built-in table, in that order.

    Args:
        composite: Rules by layer kind.
        overrides: ``{dotted name or module type: rule}`` for this call.
        factory: Builds a rule from its registered name (with the call's epsilon, gamma...);
            default: the registry's defaults.
    """

    def __init__(self, composite: Composite,
                 overrides: Mapping[str | type, ModuleRule] | None = None,
                 factory: Callable[[str], ModuleRule] | None = None) -> None:
        self.composite = composite
        self.factory = factory
        self.by_name: dict[str, ModuleRule] = {}
        self.by_type: list[tuple[type, ModuleRule]] = []
        if overrides is not None and not isinstance(overrides, Mapping):
            raise MethodError(
                "rules must be a dict {module name or type: rule name}, e.g. "
                f"{{'features.3': 'pass'}}; got {type(overrides).__name__}"
            )
        for key, rule in (overrides or {}).items():
            _check_rule_spec(rule, f"rules[{key!r}]")
            if isinstance(key, str):
                self.by_name[key] = rule
            elif isinstance(key, type) and issubclass(key, nn.Module):
                self.by_type.append((key, rule))
            else:
                raise MethodError(
                    f"rules keys must be dotted module names or nn.Module types, got {key!r}"
                )

    @staticmethod
    def is_layer(module: nn.Module) -> bool:
        """Whether the module counts as a layer for the composite (Conv or Linear)."""
        return isinstance(module, _CONVS + _DENSE)

    def rule_for(self, name: str, module: nn.Module, first: bool) -> ModuleRule | None:
        """The module's rule; None means: look into its forward (or refuse it)."""
        rule = self.by_name.get(name)
        if rule is None:
            rule = next((r for t, r in self.by_type if isinstance(module, t)), None)
        if rule is None:
            rule = next((r for t, r in _REGISTERED.items() if isinstance(module, t)), None)
        if rule is not None:
            return self._layer_rule(rule)
        if isinstance(module, _CONVS + _DENSE):
            if first and self.composite.first is not None:
                return self.composite.first
            return self.composite.conv if isinstance(module, _CONVS) else self.composite.dense
        if isinstance(module, _ACTIVATIONS + _SHIFTS):
            return R.PASS
        if isinstance(module, _ROUTING):
            return R.GRADIENT
        if isinstance(module, _POOLS):
            return R.norm()
        if isinstance(module, _BATCHNORMS):
            return BATCHNORM
        return None

    def _layer_rule(self, rule: ModuleRule) -> ModuleRule:
        if isinstance(rule, R.LayerRule):
            return rule
        if self.factory is None:
            return R.rule_entry(rule).make()
        return self.factory(rule)
