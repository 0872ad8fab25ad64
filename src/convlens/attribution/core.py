"""The method interface (:class:`Problem`) and the ``attribute`` entry point.

A method is a function ``compute(problem, **options) -> Tensor`` registered once with its
family, the space its output lives in, its options with defaults and the paper it follows.
The registry itself (``Method``, ``register``, ``methods``, ``get_method``) lives in the leaf
:mod:`convlens.attribution.registry` and is re-exported here, so old import paths keep working.

Gradient-weighted CAMs are registered differently: as a ``combine(activations, gradients)``
function. The runner computes activations and gradients once per layer and target, and
every such CAM requested in the same call is derived from them (one forward + a partial
backward for five CAMs, instead of five).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convlens._hooks import HookSession, evaluation_mode, gradients_enabled
from convlens.attribution.registry import (  # noqa: F401  (re-exported)
    FAMILIES,
    Method,
    get_method,
    methods,
    register,
)
from convlens.attribution.targets import (
    TargetLike,
    is_score_function,
    resolve_targets,
    score_logits,
    target_scores,
)
from convlens.errors import (
    ConvlensError,
    InputShapeError,
    LayerError,
    MethodError,
    TargetError,
)
from convlens.models.classifier import Classifier, as_classifier
from convlens.models.layers import resolve_layer
from convlens.models.outputs import OutputKey, model_failure, select_output
from convlens.models.tokens import TokenLayout, infer_layout, to_grid


@dataclass
class Problem:
    """Everything a method needs for one call: model, input, target, layer(s).

    Methods never touch hooks or modes directly: the problem runs the model and hands out
    the pieces, so the hook lifecycle lives in one place.

    :meth:`forward` returns "logits" ``(N, classes)``: the model's selected output
    (``output``, for models returning a tuple or dict), or, for a score-function target,
    the one-column matrix of its scores, so every method explains that score unchanged.
    """

    model: nn.Module
    x: torch.Tensor
    target: TargetLike
    labels: Sequence[str] | None = None
    layer: Any = None
    output: OutputKey = None
    classifier: Classifier | None = None
    _indices: torch.Tensor | None = field(default=None, repr=False)
    _layer_names: list[str] | None = field(default=None, repr=False)
    _modules: list[nn.Module] = field(default_factory=list, repr=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model; a failure is re-raised with the input shape that caused it."""
        try:
            out = select_output(self.model(inputs), self.output)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            if isinstance(error, ConvlensError):  # our own errors pass through
                raise
            raise model_failure(inputs, error) from error
        if is_score_function(self.target):
            return score_logits(self.target, out)
        return out

    def indices(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Target class per sample, resolved once from the unperturbed input's logits.

        Pass ``logits`` when they are the model's output on ``self.x`` (saves a forward);
        otherwise a gradient-free forward pass is run when the target needs it.
        """
        if self._indices is None:
            if logits is None:
                if self.target is None or isinstance(self.target, str) or (
                    isinstance(self.target, Sequence)
                    and any(isinstance(t, str) for t in self.target)
                ):
                    with torch.no_grad():
                        logits = self.forward(self.x)
                else:
                    classes = 1 if is_score_function(self.target) else _num_classes(self)
                    logits = torch.empty(self.x.shape[0], classes, device=self.x.device)
            self._indices = resolve_targets(self.target, logits, self.labels)
        return self._indices

    def scores(self, logits: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """Target logits of a batch made of ``repeat`` consecutive copies per sample."""
        indices = self.indices()
        if repeat != 1:
            indices = indices.repeat_interleave(repeat)
        return target_scores(logits, indices)

    def layer_names(self) -> list[str]:
        """The layer(s) for layer-space methods: given ones, or the default."""
        if self._layer_names is None:
            layers = self.layer if isinstance(self.layer, (list, tuple)) else [self.layer]
            names, modules = [], []
            for layer in layers:
                if layer is None:
                    name = self.classifier.default_layer(self.x.shape[1:])
                    names.append(name)
                    modules.append(self.model.get_submodule(name) if name else self.model)
                else:
                    name, module = resolve_layer(self.model, layer)
                    names.append(name)
                    modules.append(module)
            self._layer_names, self._modules = names, modules
        return self._layer_names

    def modules(self) -> list[nn.Module]:
        """The layer modules of :meth:`layer_names` (resolved with them, once per call)."""
        self.layer_names()
        return self._modules


def _num_classes(problem: Problem) -> int:
    """Number of outputs; found with a one-sample forward when the target is explicit."""
    with torch.no_grad():
        logits = problem.forward(problem.x[:1])
    if logits.dim() != 2:
        raise TargetError(
            f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}"
        )
    return logits.shape[1]


def check_input(x: object) -> torch.Tensor:
    """Validate a preprocessed batch: a float tensor ``(N, C, H, W)`` with finite values."""
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(
            f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}; "
            "preprocess images with Classifier.preprocess(images)"
        )
    if x.dim() == 3:
        raise InputShapeError(
            f"x must be a batch (N, C, H, W), got one sample of shape {tuple(x.shape)}; "
            "use x.unsqueeze(0)"
        )
    if x.dim() != 4:
        raise InputShapeError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputShapeError("x is an empty batch (N = 0)")
    if not x.is_floating_point():
        raise InputShapeError(
            f"x must be floating point (normalised pixels), got {x.dtype}; "
            "convert and normalise it, e.g. with Classifier.preprocess"
        )
    # The sum is finite only if every value is (a NaN or inf propagates into it), and one
    # reduction is 20x cheaper than isfinite().all() (0.7 ms against 15 ms for 16 images at
    # 224 px on one CPU thread). Only a non-finite sum (a real NaN/inf, or an overflow of
    # huge finite values) pays for the exact test.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise InputShapeError("x contains NaN or infinite values")
    return x


def _prepare_x(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Check ``x``; a detached copy in the dtype of the model's floating-point parameters.

    A float64 or float16 batch given to a float32 model (or the reverse) is converted to
    the parameters' dtype, as ``Classifier.preprocess`` would have produced it; results are
    float32 whatever the dtype (see :func:`attribute`).
    """
    x = check_input(x)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and param.device != x.device:
        raise InputShapeError(
            f"x is on {x.device} but the model's parameters are on {param.device}; move one: "
            f"x.to('{param.device}') or model.to('{x.device}')"
        )
    if param is not None and param.dtype != x.dtype:
        return x.detach().to(param.dtype)  # a converted copy
    # Detached from the caller's graph, so methods may set requires_grad on it without
    # touching the caller's tensor (no method writes into x in place). An inference-mode
    # tensor cannot enter autograd and is copied; any other is used without a copy.
    if x.is_inference():
        return x.clone()
    return x.detach()


def attribute(model: nn.Module, x: torch.Tensor, method: str | Sequence[str], target:
              TargetLike = None, layer: str | nn.Module | Sequence | None = None, *,
              output: OutputKey = None, **options: Any
              ) -> torch.Tensor | dict[str, torch.Tensor]:
    """Attribute the target class's score to the input pixels or to a layer's positions.

    Args:
        model: Any ``nn.Module`` returning logits ``(N, classes)`` (or a tuple/dict holding
            them, see ``output``), or a Classifier.
        x: Preprocessed float batch ``(N, C, H, W)``; converted to the dtype of the
            model's parameters (float64 or float16 inputs to a float32 model are accepted).
        method: A registered method name (see :func:`methods`), or a list of names, in
            which case a dict name -> tensor is returned and gradient CAMs of the same layer
            share one forward and backward pass.
        target: ``None`` = each sample's prediction; an int; one int per sample; a class
            name when the model is a Classifier with labels; or a score function
            ``f(output) -> (N,)`` (multi-label, regression, segmentation: see
            :mod:`convlens.attribution.targets`), refused by methods that need the class
            probabilities (``Method.needs_class_index``).
        layer: For layer-space methods: a dotted name, a module, or a list of them (maps
            are then upsampled to the largest and averaged). Default: the last layer with a
            spatial output.
        output: Which model output to explain when it returns a tuple or dict: an index or a
            key; default the Classifier's ``output``, else the first tensor.
        **options: Method options, e.g. ``steps=64`` for integrated gradients.

    Returns:
        Raw float32 attributions on ``x``'s device, never normalised: ``(N, C, H, W)`` for
        input-space methods, ``(N, 1, h, w)`` for layer-space methods.

    Example:
        >>> a = attribute(model, x, "integrated_gradients", target=281, steps=32)  # doctest: +SKIP
    """
    classifier = as_classifier(model)
    module, labels = classifier.module, classifier.labels
    if output is None:
        output = classifier.output
    names = [method] if isinstance(method, str) else list(method)
    if not names:
        raise MethodError("no method given; see convlens.methods()")
    specs = [get_method(name) for name in names]
    if is_score_function(target):
        refused = [spec for spec in specs if spec.needs_class_index]
        if refused:
            raise TargetError(
                f"{refused[0].name} needs a class index, not a target function: it "
                f"{refused[0].needs_class_index}. Give a class index, or use a method that "
                "explains any score (e.g. gradcam, occlusion, integrated_gradients)")
    if isinstance(method, str) or len(specs) == 1:
        bound = [specs[0].bind(options)]
    else:
        bound = [spec.bind({k: v for k, v in options.items() if k in spec.options})
                 for spec in specs]
        used = set().union(*(spec.options for spec in specs))
        if set(options) - used:
            raise MethodError(
                f"option {sorted(set(options) - used)[0]!r} belongs to none of {names}"
            )
    results: dict[str, torch.Tensor] = {}
    with evaluation_mode(module), gradients_enabled():
        x = _prepare_x(x, module)
        problem = Problem(module, x, target, labels, layer, output, classifier)
        cams = [(s, o) for s, o in zip(specs, bound) if s.combine is not None]
        if cams:
            results.update(run_gradient_cams(problem, cams))
        for spec, opts in zip(specs, bound):
            if spec.compute is not None:
                results[spec.name] = spec.compute(problem, **opts)
    results = {k: v.detach().to(torch.float32) for k, v in results.items()}
    if isinstance(method, str):
        return results[method]
    return {name: results[name] for name in names}


LayerSignals = tuple[list[str], list[torch.Tensor], list[torch.Tensor | None]]
_CAM_OBSERVERS: ContextVar[list[LayerSignals] | None] = ContextVar("convlens_cam_observers",
                                                                    default=None)


@contextmanager
def observed_cam_signals() -> Iterator[list[LayerSignals]]:
    """Collect, for every gradient-CAM computation inside the block, the layers' names, their
    activations and the target score's gradients at them (detached, grid layout).

    The CAM's own capture, handed out: the audit's concept relevances (gradient x
    activation at the CAM layer) cost no extra forward or backward. Scoped to the block
    (a context variable), nothing is registered on any module.
    """
    seen: list[LayerSignals] = []
    token = _CAM_OBSERVERS.set(seen)
    try:
        yield seen
    finally:
        _CAM_OBSERVERS.reset(token)


def run_gradient_cams(problem: Problem, requests: list[tuple[Method, dict[str, Any]]]
                      ) -> dict[str, torch.Tensor]:
    """One forward and one backward (down to the layers only) for every requested CAM."""
    names = problem.layer_names()
    modules = problem.modules()
    single = len(modules) == 1
    with HookSession() as hooks:
        captures = [hooks.capture(m, n, cut_graph=single) for m, n in zip(modules, names)]
        logits = problem.forward(problem.x)
    scores = problem.scores(logits) if problem._indices is not None else target_scores(
        logits, problem.indices(logits))
    captured = [c.output for c in captures]
    layouts = feature_map_layouts(names, captured, problem.x)
    if not all(a.requires_grad for a in captured):
        raise LayerError("the target score does not depend on the chosen layer(s) "
                         f"{names}; choose a layer below the output")
    gradients = torch.autograd.grad(scores.sum(), captured, allow_unused=True)
    # Token outputs (N, T, D): activation and gradient get the same token -> grid layout.
    activations = [as_grid(a.detach(), lay) for a, lay in zip(captured, layouts)]
    gradients = [None if g is None else as_grid(g.detach(), lay)
                 for g, lay in zip(gradients, layouts)]
    observers = _CAM_OBSERVERS.get()
    if observers is not None:
        observers.append((list(names), activations, gradients))
    out: dict[str, torch.Tensor] = {}
    for spec, opts in requests:
        maps = []
        for act, grad in zip(activations, gradients):
            grad = torch.zeros_like(act) if grad is None else grad
            maps.append(spec.combine(act, grad, **opts))
        out[spec.name] = combine_layers(maps)
    return out


def feature_map_layouts(names: Sequence[str], activations: Sequence[torch.Tensor],
                        x: torch.Tensor, refuse_tokens: str | None = None
                        ) -> list[TokenLayout | None]:
    """Per layer: ``None`` for an ``(N, C, H, W)`` map, a token layout for ``(N, T, D)``.

    Token outputs of vision transformers are read as a patch grid (prefix tokens dropped,
    grid from the input size; see :mod:`convlens.models.tokens` and docs/architecture.md,
    "Models"). ``refuse_tokens``: a reason to refuse them instead (a method that needs the
    layer's own layout).

    Raises:
        LayerError: for any other shape, or tokens when refused, naming the layer.
    """
    layouts: list[TokenLayout | None] = []
    for name, activation in zip(names, activations):
        if activation.dim() == 3:
            if refuse_tokens:
                raise LayerError(f"layer {name!r} outputs tokens {tuple(activation.shape)}: "
                                 f"{refuse_tokens}")
            layouts.append(infer_layout(tuple(activation.shape), tuple(x.shape[-2:]),
                                        x.shape[0], name))
        else:
            check_feature_maps([name], [activation])
            layouts.append(None)
    return layouts


def as_grid(tensor: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
    """``tensor`` unchanged for a feature map, laid out as a patch grid for tokens."""
    return tensor if layout is None else to_grid(tensor, layout)


def check_feature_maps(names: Sequence[str], activations: Sequence[torch.Tensor]) -> None:
    """Refuse layers whose output is not an ``(N, C, H, W)`` feature map, naming them."""
    for name, activation in zip(names, activations):
        if activation.dim() != 4:
            raise LayerError(
                f"layer {name!r} outputs shape {tuple(activation.shape)}; CAMs need a "
                "(N, C, H, W) feature map or (N, T, D) tokens. Choose a convolutional layer "
                "or a transformer block (see `convlens layers`)"
            )


def combine_layers(maps: list[torch.Tensor]) -> torch.Tensor:
    """Average per-layer maps after bilinear upsampling to the largest resolution."""
    if len(maps) == 1:
        return maps[0]
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    resized = [
        m if m.shape[-2:] == size else torch.nn.functional.interpolate(
            m, size=tuple(size), mode="bilinear", align_corners=False)
        for m in maps
    ]
    return torch.stack(resized).mean(0)
