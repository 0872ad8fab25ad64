"""The LRP engine: the whole propagation in one forward and one backward pass.

The gradient trick (Zennit; Montavon et al. 2019, sec. 10.1): for a layer rule with modified
forward ``d = sum_k layer_k(m_k(x))`` (``rules.py``), the relevance at the input is
``sum_k m_k(x) * J_k^T (R / stab(d))``, a vector-Jacobian product. Zennit evaluates it in a
backward hook, re-running each layer there. We build the modified graph *during the forward
pass* instead, so that one ``torch.autograd.grad`` from the logits to the input evaluates
every layer's rule at once, with autograd's gradient equal to relevance between layers
(the autograd functions are in ``graph.py``):

* ``InputTimes`` sits on each modified input ``m_k(x)``: forward identity, backward
  multiplies by ``m_k(x)`` (the "x *" of the rule).
* ``Relay`` returns the layer's *real* output (so the network computes exactly what it
  always computes, bit for bit) while the backward goes into the modified outputs, divided
  by their stabilised sums (the "/ stab(d)").
* ``Pass`` gives activations an identity backward; ``Sum`` splits relevance over the terms
  of a residual addition in proportion to their values.

A term that is the layer's own forward (``x W``, in epsilon, and in z+, alpha-beta and gamma
as written in ``rules.py``) reuses the real forward's graph: the layer's input is wrapped in
``InputTimes`` before it runs. So epsilon costs no extra convolution, and z+ one (``x W+``
after a ReLU; ``|x| |W|`` on a signed input).

Layers are *lazy*: a Conv/Linear output is handed to the network as a guard tensor, and the
rule's graph is only built when something consumes it. If the consumer is a BatchNorm, the
two are merged (``canonizers.py``) and the conv's own rule graph is never built; every other
consumer (a module, or a torch function caught by the function mode, ``functions.py``) gets
the built graph. A guard reached by the backward pass means relevance took a path nobody
intercepted, and raises instead of returning a wrong map.

Nothing is written to the model: hooks live in one HookSession, parameters are read
(detached) and never assigned, and the function mode exists only during the forward call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens._hooks import HookSession
from convlens.attribution.relevance import functions as fn
from convlens.attribution.relevance import graph as G
from convlens.attribution.relevance import rules as R
from convlens.attribution.relevance.canonizers import AffineOp, affine_op, merge_batchnorm
from convlens.attribution.relevance.composites import (
    BATCHNORM,
    NONNEGATIVE,
    SIGN_PRESERVING,
    RuleBook,
)
from convlens.errors import LayerError, UnsupportedModelError

# ------------------------------------------------------------------------------- state


@dataclass(eq=False)
class _Pending:
    """A layer output whose rule graph is not built yet (see the module docstring).

    ``graph`` is the real output with its autograd graph, when the rule has a term that
    is the layer's own forward (then the input was wrapped in ``InputTimes`` before the
    layer ran); ``op`` is the layer's affine map (BatchNorm merged in), applied to ``x``
    for the modified terms.
    """

    rule: R.LayerRule
    value: torch.Tensor
    where: str
    graph: torch.Tensor | None = None
    op: AffineOp | None = None
    x: torch.Tensor | None = None
    nonnegative_input: bool = False
    guard: torch.Tensor | None = None
    built: torch.Tensor | None = None
    tap: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(eq=False)
class _Frame:
    """One call of a module that has a rule, between its pre-hook and its forward hook."""

    module: nn.Module
    name: str
    rule: Any
    x: torch.Tensor | None = None
    nonnegative_input: bool = False
    merge: _Pending | None = None


@dataclass(eq=False)
class Propagation:
    """One LRP forward pass over a model; see the module docstring.

    Args:
        model: The network (already in eval mode).
        book: Rule resolution (composite and overrides).
        tap: ``(module, fn)``: the relevance graph's tensor at ``module``'s output is passed
            through ``fn`` (concept-conditional relevance, ``attribution/crp.py``, taps a
            layer there). A Conv/Linear output merged with the BatchNorm after it is tapped
            after the BatchNorm, where the merged layer ends.
        plain_below_tap: Run the modules before the tap without rules (their plain forward):
            for relevance at the tapped layer only, which never needs what lies below.
    """

    model: nn.Module
    book: RuleBook
    tap: tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None = None
    tapped: int = 0
    plain_below_tap: bool = False
    reached_tap: bool = False
    names: dict[int, str] = field(default_factory=dict)
    pending: dict[int, _Pending] = field(default_factory=dict)
    nonnegative: dict[int, torch.Tensor] = field(default_factory=dict)
    frames: list[_Frame] = field(default_factory=list)
    interpreted: list[tuple[str, nn.Module]] = field(default_factory=list)
    opaque: int = 0
    internal: int = 0
    seen_layer: bool = False

    def __post_init__(self) -> None:
        for name, module in self.model.named_modules():
            self.names.setdefault(id(module), name)

    # -- entry point -------------------------------------------------------------------

    def run(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
        """Run ``forward(x)`` with every rule in place; return logits carrying the graph."""
        with HookSession() as hooks:
            for module in self.model.modules():
                hooks.forward_pre_hook(module, self._guarded(self._pre_hook))
                hooks.forward_hook(module, self._guarded(self._post_hook))
            with _FunctionRules(self):
                output = forward(x)
        if not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(
                f"LRP needs a model that returns a logits tensor, got {type(output).__name__}"
            )
        self.internal += 1
        try:
            return self.resolve(output)
        finally:
            self.internal -= 1

    def _guarded(self, hook: Callable) -> Callable:
        def wrapper(*args: Any) -> Any:
            self.internal += 1
            try:
                return hook(*args)
            finally:
                self.internal -= 1
        return wrapper

    # -- module hooks ------------------------------------------------------------------

    @property
    def plain(self) -> bool:
        """No rules now: inside a module with a rule, or below the tap when asked."""
        return bool(self.opaque) or (self.plain_below_tap and not self.reached_tap)

    def _pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.tap is not None and module is self.tap[0]:
            self.reached_tap = True  # the tapped layer keeps its rule (and its BatchNorm merge)
        if self.plain:
            if not self.opaque and self.book.is_layer(module):
                self.seen_layer = True  # the first layer's rule stays where it belongs
            return None
        name = self.names.get(id(module), type(module).__name__)
        layer = self.book.is_layer(module)
        rule = self.book.rule_for(name, module, first=layer and not self.seen_layer)
        if layer:
            self.seen_layer = True
        if rule is None:
            if next(module.children(), None) is None and _has_state(module):
                raise UnsupportedModelError(_no_rule_message(name, module))
            self.interpreted.append((name, module))
            return None
        frame = _Frame(module, name, rule)
        self.frames.append(frame)
        self.opaque += 1
        if rule == R.GRADIENT:
            args = fn.map_tensors(args, self.resolve)
            frame.nonnegative_input = all(self.is_nonnegative(t) for t in fn.tensors(args))
            return args
        x, rest = self._single_input(name, module, args)
        if rule == BATCHNORM:
            source = self.pending_of(x)
            if source is not None and _mergeable(source, module):
                frame.merge = source
                given = source.graph if source.graph is not None else source.value
                return (given, *rest)
            frame.rule = rule = R.norm()
        x = self.resolve(x)
        frame.x = x
        frame.nonnegative_input = self.is_nonnegative(x)
        if rule == R.PASS:
            return (x.detach(), *rest)
        terms = [t for g in rule.form(frame.nonnegative_input) for t in g.terms]
        if not all(t.is_forward and t.bias for t in terms) and affine_op(module) is None:
            raise UnsupportedModelError(
                f"rule {rule.name!r} modifies weights, but module '{name}' "
                f"({type(module).__name__}) is not a Conv, Linear or BatchNorm layer; "
                "give it 'epsilon', 'pass' or 'gradient' instead"
            )
        if any(t.is_forward for t in terms):  # the real forward is one of the rule's terms
            return (G.InputTimes.apply(x, [x]), *rest)
        return (x.detach(), *rest)

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        result = self._rule_post_hook(module, args, output)
        if self.tap is None or module is not self.tap[0]:
            return result
        return self._apply_tap(module, output if result is None else result)

    def _apply_tap(self, module: nn.Module, output: Any) -> Any:
        """Hand the tapped layer's output to the tap (now, or when its rule graph is built)."""
        name = self.names.get(id(module), type(module).__name__)
        if self.opaque:
            outer = self.frames[-1].name if self.frames else "an enclosing module"
            raise LayerError(
                f"layer {name!r} runs inside '{outer}', which LRP treats as one unit (its "
                "rule covers its whole forward); choose that module or a layer outside it")
        if not isinstance(output, torch.Tensor):
            raise LayerError(f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                             "choose a layer with a single tensor output")
        self.tapped += 1
        if self.tapped > 1:
            raise LayerError(f"layer {name!r} runs more than once in one forward pass, so its "
                             "channels are not one set of concepts; choose a layer that runs once")
        pending = self.pending_of(output)
        if pending is not None:
            pending.tap = self.tap[1]
            return output
        tapped = self.tap[1](output)
        if self.is_nonnegative(output):
            self.mark_nonnegative(tapped)
        return tapped

    def _rule_post_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not (self.frames and self.frames[-1].module is module):
            if not self.opaque and self.interpreted and self.interpreted[-1][1] is module:
                self.interpreted.pop()
            return None
        frame = self.frames.pop()
        self.opaque -= 1
        rule = frame.rule
        if rule == R.GRADIENT:
            if frame.nonnegative_input and isinstance(module, SIGN_PRESERVING):
                self.mark_nonnegative(output)
            return None
        if not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(
                f"module '{frame.name}' ({type(module).__name__}) returns "
                f"{type(output).__name__}; LRP rules need a single tensor output"
            )
        if rule == R.PASS:
            if output.shape != frame.x.shape:
                raise UnsupportedModelError(
                    f"module '{frame.name}' ({type(module).__name__}) has rule 'pass' but maps "
                    f"{tuple(frame.x.shape)} to {tuple(output.shape)}; relevance can only pass "
                    "unchanged between equal shapes: use 'gradient' or 'epsilon'"
                )
            out = G.Pass.apply(frame.x, [output])
            if isinstance(module, NONNEGATIVE) or (
                    isinstance(module, nn.Hardtanh) and module.min_val >= 0):
                self.mark_nonnegative(out)
            return out
        if frame.merge is not None:
            source = frame.merge
            op = None if source.op is None else merge_batchnorm(source.op, module)
            graph = output if source.graph is not None else None
            pending = _Pending(source.rule, output.detach(), f"{source.where} + '{frame.name}'",
                               graph=graph, op=op, x=source.x,
                               nonnegative_input=source.nonnegative_input, tap=source.tap)
            return self._guard(pending, source.x)
        graph = output if output.requires_grad and output.grad_fn is not None and any(
            t.is_forward for g in rule.form(frame.nonnegative_input) for t in g.terms) else None
        pending = _Pending(rule, output.detach(), f"'{frame.name}' ({type(module).__name__})",
                           graph=graph, op=affine_op(module), x=frame.x,
                           nonnegative_input=frame.nonnegative_input)
        return self._guard(pending, frame.x)

    @staticmethod
    def _single_input(name: str, module: nn.Module, args: tuple
                      ) -> tuple[torch.Tensor, tuple]:
        if not args or not isinstance(args[0], torch.Tensor) or any(
                isinstance(a, torch.Tensor) for a in args[1:]):
            raise UnsupportedModelError(
                f"module '{name}' ({type(module).__name__}) must be called with one tensor "
                "argument for its LRP rule; give it the rule 'gradient' to use its own backward"
            )
        return args[0], args[1:]

    # -- pending layers ----------------------------------------------------------------

    def _guard(self, pending: _Pending, anchor: torch.Tensor) -> torch.Tensor:
        guard = G.Guard.apply(anchor, [pending.value], pending.where)
        pending.guard = guard
        self.pending[id(guard)] = pending
        return guard

    def pending_of(self, t: object) -> _Pending | None:
        """The pending layer whose guard ``t`` is, if any."""
        pending = self.pending.get(id(t))
        return pending if pending is not None and pending.guard is t else None

    def resolve(self, t: Any) -> Any:
        """``t`` itself, or, for a guard, the built rule graph of its layer."""
        pending = self.pending_of(t)
        if pending is None:
            return t
        if pending.built is None:
            built = self._build(pending)
            pending.built = built if pending.tap is None else pending.tap(built)
        return pending.built

    def _build(self, pending: _Pending) -> torch.Tensor:
        """The rule's modified forward, ending in a Relay that returns the real output."""
        rule, nonnegative = pending.rule, pending.nonnegative_input
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[tuple, torch.Tensor] = {}
        denominators, spec = [], []
        for group in rule.form(nonnegative):
            den = None
            for term in group.terms:
                z = self._term(pending, term, inputs, outputs)
                if z is None:
                    continue
                c = term.coefficient
                if den is None:
                    den = z if c == 1 else c * z
                elif abs(c) == 1:
                    den = den + z if c > 0 else den - z
                else:
                    den = den + c * z
            if den is not None:
                denominators.append(den)
                spec.append((group.scale, group.where, rule.epsilon / abs(group.factor)))
        return G.Relay.apply([pending.value], tuple(spec), *denominators)

    @staticmethod
    def _term(pending: _Pending, term: R.Term, inputs: dict, outputs: dict
              ) -> torch.Tensor | None:
        """One term's output ``layer(m(x); p(W), p(b))``, shared between groups."""
        modifier, params = term.inputs, term.params
        if pending.nonnegative_input:
            if modifier is R.positive_part or modifier is R.absolute:
                modifier = R.identity
            elif modifier is R.negative_part and not term.bias:
                return None  # min(x, 0) = 0: the term is zero
        op = pending.op
        if op is None:  # a module without weights under a forward-only rule (epsilon)
            return pending.graph
        if modifier is R.identity and params is R.identity and pending.graph is not None:
            if term.bias or op.bias is None:
                return pending.graph  # the real forward, with its autograd graph
            return pending.graph - op.bias.view((1, -1) + (1,) * (pending.graph.dim() - 2))
        key = (id(modifier), id(params), term.bias)
        if key not in outputs:
            x = pending.x
            if id(modifier) not in inputs:
                value = _modified_input(modifier, x)
                inputs[id(modifier)] = G.InputTimes.apply(x, [value])
            bias = params(op.bias) if term.bias and op.bias is not None else None
            outputs[key] = op.apply(inputs[id(modifier)], params(op.weight), bias)
        return outputs[key]

    # -- non-negativity ------------------------------------------------------------------

    def is_nonnegative(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and self.nonnegative.get(id(t)) is t

    def mark_nonnegative(self, t: object) -> None:
        if isinstance(t, torch.Tensor):
            self.nonnegative[id(t)] = t

    # -- messages ----------------------------------------------------------------------

    def where(self) -> tuple[str, nn.Module]:
        """The innermost module whose forward is being interpreted (for messages)."""
        if self.interpreted:
            return self.interpreted[-1]
        return "", self.model


def _modified_input(modifier: Any, x: torch.Tensor) -> torch.Tensor:
    if isinstance(modifier, torch.Tensor):
        bound = modifier.to(device=x.device, dtype=x.dtype)
        try:
            return bound.expand_as(x)
        except RuntimeError:
            raise UnsupportedModelError(
                f"input bounds of shape {tuple(bound.shape)} do not broadcast to the first "
                f"layer's input {tuple(x.shape)}; give low/high as numbers or per-channel "
                "values of shape (C,) or (N, C, 1, 1)"
            ) from None
    return modifier(x.detach())


def _has_state(module: nn.Module) -> bool:
    return (next(module.parameters(recurse=False), None) is not None
            or next(module.buffers(recurse=False), None) is not None)


def _mergeable(source: _Pending, batchnorm: nn.Module) -> bool:
    if source.op is None:  # a plain rule on a module that is no affine layer: graph only
        return source.graph is not None
    return source.op.weight.shape[0] == batchnorm.num_features


def _no_rule_message(name: str, module: nn.Module) -> str:
    kind = type(module).__name__
    label = f"'{name}' ({kind})" if name else f"the model ({kind})"
    return (
        f"LRP has no rule for module {label}: it has parameters and is not a known layer, so "
        "the relevance through it would be a guess. Give it a rule for this call with "
        f"rules={{'{name}': 'pass'}} (relevance passes unchanged; equal input and output "
        "shapes), 'gradient' (its own backward routes relevance) or 'epsilon' (it is a "
        "linear map), or for every such module: "
        f"convlens.attribution.relevance.register_rule({kind}, 'pass')"
    )


class _FunctionRules(TorchFunctionMode):
    """Applies LRP conventions to torch functions called outside rule-covered modules."""

    def __init__(self, propagation: Propagation) -> None:
        super().__init__()
        self.propagation = propagation

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        p = self.propagation
        if p.internal or p.plain:
            return func(*args, **kwargs)
        p.internal += 1
        try:
            return fn.apply_function_rule(p, func, args, kwargs)
        finally:
            p.internal -= 1


__all__ = ["Propagation", "UnsupportedModelError"]
