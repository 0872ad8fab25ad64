"""LRP rules as data: which modified forward passes a layer runs, and how relevance is split.

A layer rule (after Zennit's ``BasicHook``, Anders et al. 2021) is a list of *groups*; a group
is a list of *terms*; a term is one forward pass of the layer with a modified input and
modified parameters. For an affine layer ``z = W x + b`` and upper relevance ``R``::

    d_g   = f_g * sum over terms k of group g:  c_k * layer(m_k(x); p_k(W), p_k(b) or 0)
    R_in  = sum over g, k:  f_g * c_k * m_k(x) * J_k^T (scale_g * mask_g * R / stab(d_g))

where ``J_k^T`` is the transposed layer with the term's parameters, ``stab(z) = z + eps *
sign(z)`` with ``sign(0) = +1`` (docs/architecture.md), and ``mask_g`` optionally keeps only
outputs of one sign (the generalised gamma rule). The propagation engine evaluates all of this
inside one forward and one backward pass of the network (see ``propagation.py``); this module
only says *what* to compute.

Beyond layer rules, two module-level rules exist: :data:`PASS` (relevance goes from output to
input unchanged: activations) and :data:`GRADIENT` (the module's own backward: max pooling is
winner-takes-all, padding crops, reshapes permute).

References: Bach et al. 2015 (epsilon, alpha-beta), Montavon et al. 2017 (z+, z-box, deep
Taylor), Montavon et al. 2019 "Layer-Wise Relevance Propagation: An Overview" (gamma,
composites), Lapuschkin et al. 2019 (flat), Andeol et al. 2021 (gamma for signed inputs).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from convlens.errors import MethodError, unknown_choice

#: Stabiliser of every rule other than epsilon (Zennit's default, so results compare).
STABILISER = 1e-6

#: Module-level rule: relevance passes from output to input unchanged (activations).
PASS = "pass"
#: Module-level rule: the module's own backward is used (max pool, padding, reshapes).
GRADIENT = "gradient"

_BACH = "Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions"
_DTD = "Montavon et al. 2017, Explaining Nonlinear Classification Decisions with Deep Taylor " \
       "Decomposition"
_OVERVIEW = "Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview"


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1``, as ``copysign(|z| + eps, z)``.

    A -0.0 gets ``-eps`` here. It cannot change a result: an exact-zero denominator only
    arises as -0.0 from sums of zero contributions (IEEE cancellation ``a + (-a)`` gives
    +0.0), and then every numerator it divides is zero too. Four in-place passes over the
    layer's output, where ``torch.where`` costs about three times as much.
    """
    if epsilon == 0:
        return z
    return z.abs().add_(epsilon).copysign_(z)


def safe_reciprocal(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``1 / stab(z)``, with 0 where the stabilised denominator is exactly 0 (epsilon = 0).

    LRP-0 divides by the pre-activation; where it is 0 the upper relevance is 0 as well
    in a ReLU network, and we define 0 / 0 = 0 instead of NaN (Zennit returns NaN there).
    In-place arithmetic on one fresh tensor: this runs once per layer on its whole output.
    """
    if epsilon == 0:
        return z.reciprocal().masked_fill_(z == 0, 0.0)
    return stabilise(z, epsilon).reciprocal_()


# Input and parameter modifiers. They are module-level functions (not lambdas) so that the
# engine can recognise them: on a non-negative input, |x| and max(x, 0) are x itself and a
# term on min(x, 0) vanishes; a term (identity, identity) is the layer's real forward.

def identity(t: torch.Tensor) -> torch.Tensor:
    """The unmodified tensor."""
    return t


def absolute(t: torch.Tensor) -> torch.Tensor:
    """``|t|``."""
    return t.abs()


def positive_part(t: torch.Tensor) -> torch.Tensor:
    """``max(t, 0)``."""
    return t.clamp(min=0)


def negative_part(t: torch.Tensor) -> torch.Tensor:
    """``min(t, 0)``."""
    return t.clamp(max=0)


def ones(t: torch.Tensor) -> torch.Tensor:
    """All ones, shaped like ``t`` (the flat rule's input and weights)."""
    return torch.ones_like(t)


@dataclass(frozen=True)
class Term:
    """One modified forward pass of a layer.

    Attributes:
        inputs: Input modifier ``x -> m(x)`` (same shape), or a fixed tensor broadcast to
            the input (the z-box bounds).
        params: Parameter modifier applied to the weight, and to the bias if ``bias``.
        bias: Whether this term includes the (modified) bias.
        coefficient: The term's weight in its group's denominator (and so in the relevance
            it passes back).
    """

    inputs: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor
    params: Callable[[torch.Tensor], torch.Tensor]
    bias: bool
    coefficient: float = 1.0

    @property
    def is_forward(self) -> bool:
        """Whether the term is the layer's own forward (with or without its bias)."""
        return self.inputs is identity and self.params is identity


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator.

    Attributes:
        terms: The modified forward passes summed into the denominator.
        scale: Multiplies the relevance this group passes down (alpha, or -beta).
        where: ``None`` (every output), ``"positive"`` or ``"negative"``: only outputs of
            the layer whose real value has that sign take part (the generalised gamma rule).
        factor: A common factor ``c`` of the terms, kept out of the arithmetic: the
            denominator is ``c * S`` with ``S`` the sum of the terms, and since
            ``c R / stab_eps(c S) = R / stab_{eps/|c|}(S)``, the engine divides by ``S``
            with a rescaled stabiliser and never multiplies a full tensor by ``c``.
    """

    terms: tuple[Term, ...]
    scale: float = 1.0
    where: str | None = None
    factor: float = 1.0


@dataclass(frozen=True)
class LayerRule:
    """An LRP rule for an affine layer (convolution, linear, merged batch norm, pooling).

    Attributes:
        name: What users call it, e.g. ``"epsilon"``.
        groups: See the module docstring; valid for any input.
        epsilon: Stabiliser of the denominators.
        nonnegative_groups: An equal but cheaper form for inputs known to be >= 0 (after a
            ReLU), or None to use ``groups`` there too.
    """

    name: str
    groups: tuple[Group, ...]
    epsilon: float = STABILISER
    nonnegative_groups: tuple[Group, ...] | None = None

    def form(self, nonnegative_input: bool) -> tuple[Group, ...]:
        """The groups to compute for an input of known (or unknown) sign."""
        if nonnegative_input and self.nonnegative_groups is not None:
            return self.nonnegative_groups
        return self.groups


@dataclass(frozen=True)
class RuleEntry:
    """A registered rule: the one place its name, parameters and paper are written.

    Attributes:
        name: What users call it in ``rules={...}`` and what composites refer to.
        parameters: The call options the rule reads (e.g. ``("epsilon",)``), with their
            defaults; a parameter without a default must be given (z-box's bounds).
        reference: The paper the rule follows.
        build: ``build(**parameters) -> LayerRule``; None for the module-level rules
            :data:`PASS` and :data:`GRADIENT`, which are used by name.
    """

    name: str
    parameters: Mapping[str, Any]
    reference: str
    build: Callable[..., LayerRule] | None = None

    def make(self, options: Mapping[str, Any] | None = None) -> LayerRule | str:
        """The rule with its parameters taken from ``options`` (a method's call options).

        Options the rule does not read are ignored; missing ones take the defaults.
        """
        if self.build is None:
            return self.name
        options = options or {}
        kwargs = {p: options[p] for p in self.parameters if options.get(p) is not None}
        missing = [p for p, d in self.parameters.items()
                   if d is inspect.Parameter.empty and p not in kwargs]
        if missing:
            raise MethodError(f"the {self.name} rule needs {' and '.join(missing)}; "
                              "pass them as options of the call")
        return self.build(**kwargs)


_RULES: dict[str, RuleEntry] = {}


def register_layer_rule(name: str, *, reference: str
                        ) -> Callable[[Callable[..., LayerRule]], Callable[..., LayerRule]]:
    """Register a rule builder under ``name``; its parameters come from its signature.

    As Zennit registers its rules with decorators: one entry per rule, read by composites,
    the ``rules={...}`` option and error messages alike, so a name cannot be missing from
    one of them.
    """

    def decorate(build: Callable[..., LayerRule]) -> Callable[..., LayerRule]:
        parameters = {p.name: p.default for p in inspect.signature(build).parameters.values()}
        _RULES[name] = RuleEntry(name, parameters, reference, build)
        return build

    return decorate


def rule_entry(name: object) -> RuleEntry:
    """The registered rule called ``name``; an unknown name raises MethodError listing all."""
    if not isinstance(name, str) or name not in _RULES:
        raise MethodError(unknown_choice("rule", name, _RULES))
    return _RULES[name]


def rule_names() -> tuple[str, ...]:
    """Every registered rule name, in registration order."""
    return tuple(_RULES)


_RULES[PASS] = RuleEntry(PASS, {}, "relevance passes unchanged through activations "
                         "(Montavon et al. 2019, sec. 10.1)")
_RULES[GRADIENT] = RuleEntry(GRADIENT, {}, "the module's own gradient routes relevance: max "
                             "pooling winner-takes-all, padding and reshapes (Montavon et al. "
                             "2019, sec. 10.1)")


def _check_number(name: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MethodError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= minimum:  # also refuses NaN
        raise MethodError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


# The ratio rules below are written in the basis {x W, |x| |W|}: positive contributions
# x+ W+ + x- W- equal (x W + |x| |W|) / 2 and negative ones x+ W- + x- W+ equal
# (x W - |x| |W|) / 2. x W is the layer's real forward (no extra pass), so z+, alpha-beta
# and gamma cost one modified convolution, shared by their groups, instead of two per
# group. On a non-negative input |x| = x, and z+ uses the one-pass x W+ directly. Common
# factors go to Group.factor and the rest into the (small) weights, so that groups are
# formed by adding and subtracting term outputs, without full-size multiplications.

@register_layer_rule("epsilon", reference=_BACH)
def epsilon(epsilon: float = 1e-6) -> LayerRule:
    """LRP-epsilon (Bach et al. 2015): ``R_i = sum_j x_i w_ij / stab(z_j) R_j``, bias included.

    ``eps = 0`` is LRP-0, which equals input times gradient in a ReLU network.
    """
    eps = _check_number("epsilon", epsilon)
    return LayerRule("epsilon", (Group((Term(identity, identity, bias=True),)),), eps)


@register_layer_rule("norm", reference=_OVERVIEW)
def norm() -> LayerRule:
    """The epsilon rule with only a tiny stabiliser: for average pooling and sums.

    Relevance is redistributed in proportion to each input's contribution (docs/architecture.md:
    "average pooling redistributes in proportion to its inputs"); Zennit calls it ``Norm``.
    """
    return LayerRule("norm", (Group((Term(identity, identity, bias=True),)),), STABILISER)


@register_layer_rule("zplus", reference=_DTD)
def zplus() -> LayerRule:
    """LRP-z+ (Montavon et al. 2017), generalised to signed inputs.

    Only positive contributions ``x_i w_ij > 0`` count: ``x+ W+ + x- W-``. The bias is
    ignored (docs/architecture.md convention; Zennit's ``ZPlus`` keeps a positive bias unless given
    ``zero_params='bias'``).
    """
    signed = Group((Term(identity, identity, bias=False), Term(absolute, absolute, bias=False)),
                   factor=0.5)
    nonnegative = Group((Term(identity, positive_part, bias=False),))
    return LayerRule("zplus", (signed,), nonnegative_groups=(nonnegative,))


@register_layer_rule("alpha_beta", reference=_BACH)
def alpha_beta(alpha: float = 2.0, beta: float = 1.0) -> LayerRule:
    """LRP-alpha-beta (Bach et al. 2015), ``alpha - beta = 1`` so relevance is conserved.

    Positive contributions get ``alpha``, negative ones ``-beta``, each normalised by its own
    sum. Biases are ignored, as in Montavon et al. 2019, eq. (4) (Zennit splits a bias
    into both parts unless given ``zero_params='bias'``).
    """
    alpha = _check_number("alpha", alpha)
    beta = _check_number("beta", beta)
    if abs(alpha - beta - 1.0) > 1e-9:
        raise MethodError(
            f"alpha - beta must equal 1 for relevance to be conserved, got alpha={alpha}, "
            f"beta={beta}; e.g. alpha=2, beta=1 or alpha=1, beta=0"
        )
    if not beta:
        return zplus()
    forward = Term(identity, identity, bias=False)
    positive = Group((forward, Term(absolute, absolute, bias=False)), scale=alpha, factor=0.5)
    negative = Group((forward, Term(absolute, absolute, bias=False, coefficient=-1.0)),
                     scale=-beta, factor=0.5)
    return LayerRule("alpha_beta", (positive, negative))


@register_layer_rule("gamma", reference=f"{_OVERVIEW}; Andeol et al. 2021")
def gamma(gamma: float = 0.25) -> LayerRule:
    """LRP-gamma (Montavon et al. 2019), generalised to signed inputs (Andeol et al. 2021).

    For outputs z > 0 the weights become ``W + gamma W+`` on positive inputs and
    ``W + gamma W-`` on negative inputs (favouring what pushed z up), and the bias
    ``b + gamma b+``; for z < 0 the roles swap. In the basis: ``(1 + gamma/2) (x W + b) +-
    gamma/2 (|x| |W| + |b|)``. Equal to Zennit's ``Gamma``.
    """
    g = _check_number("gamma", gamma)
    ratio = (g / 2) / (1 + g / 2)

    def scaled_absolute(w: torch.Tensor) -> torch.Tensor:
        return w.abs() * ratio

    forward = Term(identity, identity, bias=True)
    positive = Group((forward, Term(absolute, scaled_absolute, bias=True)), where="positive",
                     factor=1 + g / 2)
    negative = Group((forward, Term(absolute, scaled_absolute, bias=True, coefficient=-1.0)),
                     where="negative", factor=1 + g / 2)
    return LayerRule("gamma", (positive, negative))


@register_layer_rule("flat", reference="Lapuschkin et al. 2019, Unmasking Clever Hans "
                     "Predictors and Assessing What Machines Really Learn")
def flat() -> LayerRule:
    """LRP-flat (Lapuschkin et al. 2019): inputs and weights set to one, no bias.

    Each output's relevance is spread uniformly over its receptive field; the result does
    not depend on the input's values. Used for the first layer in composites.
    """
    return LayerRule("flat", (Group((Term(ones, ones, bias=False),)),))


@register_layer_rule("zbox", reference=_DTD)
def zbox(low: torch.Tensor, high: torch.Tensor) -> LayerRule:
    """LRP-z^B (Montavon et al. 2017) for inputs bounded by ``low <= x <= high``.

    ``R_i = sum_j (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) / sum_i(...) R_j``. Biases cancel
    out of the denominator (Zennit keeps them in each term, with the same result).
    """
    return LayerRule("zbox", (Group((Term(identity, identity, bias=False),
                                     Term(low, positive_part, bias=False, coefficient=-1.0),
                                     Term(high, negative_part, bias=False, coefficient=-1.0))),))


#: Rule names a user may give in ``rules={...}`` (the registry's keys, for display).
RULE_NAMES = rule_names()
