"""Class activation maps: weighted sums of a layer's channels, at the layer's resolution.

The gradient-weighted variants (gradcam, hirescam, xgradcam, gradcam_plus_plus, layercam)
are registered as ``combine(A, G)``: ``A`` is the layer's activation ``(N, K, h, w)``, ``G``
the gradient of the target logit with respect to it. The runner in
:mod:`convlens.attribution.core` computes ``A`` and ``G`` once per call, with a backward
pass that stops at the layer, and derives every requested variant from them.

The others need activations only: ``cam`` (the classifier's weights, one forward),
``eigencam`` (a principal component, one forward), ``scorecam`` and ``ablationcam`` (one
extra pass per channel, batched). All accept a list of layers (maps are averaged after
upsampling to the largest, as for the gradient CAMs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import HookSession
from convlens.attribution.core import (
    Problem,
    as_grid,
    combine_layers,
    feature_map_layouts,
    register,
)
from convlens.errors import ConvlensError, MethodError, UnsupportedModelError


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


@register("hirescam", family="cam", space="layer", gradient_cam=True,
          reference="Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM",
          summary="activations times gradients, position by position, summed over channels")
def hirescam(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True
             ) -> torch.Tensor:
    """ReLU(sum_k G_k * A_k): Grad-CAM without the spatial averaging of the gradient."""
    return _weighted_sum(gradients, activations, relu)


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (never NaN or inf)."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(numerator),
                       numerator / torch.where(zero, torch.ones_like(denominator), denominator))


@register("xgradcam", family="cam", space="layer", gradient_cam=True,
          reference="Fu et al. 2020, Axiom-based Grad-CAM (XGrad-CAM)",
          summary="channels weighted by their activation-weighted gradient")
def xgradcam(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True
             ) -> torch.Tensor:
    """ReLU(sum_k w_k A_k), w_k = sum_ij(G_k A_k) / (sum_ij A_k + 1e-7).

    The 1e-7 is the paper's and pytorch-grad-cam's stabiliser; a channel whose
    denominator is still exactly 0 gets weight 0.
    """
    numerator = (gradients * activations).sum(dim=(2, 3), keepdim=True)
    denominator = activations.sum(dim=(2, 3), keepdim=True) + 1e-7
    return _weighted_sum(_safe_divide(numerator, denominator), activations, relu)


@register("gradcam_plus_plus", family="cam", space="layer", gradient_cam=True,
          reference="Chattopadhay et al. 2018, Grad-CAM++",
          summary="channels weighted by positive gradients, re-weighted position by position")
def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True
                      ) -> torch.Tensor:
    """ReLU(sum_k w_k A_k), w_k = sum_ij ReLU(G_kij) alpha_kij.

    alpha = G^2 / (2 G^2 + sum_ij(A_k) G^3), the closed form of the paper's eq. 19 for an
    exponential output, is computed as ``1 / (2 + sum_ij(A_k) G)`` where ``G != 0`` (the
    same number without squaring and cubing tiny gradients into 0 / 0) and 0 where
    ``G == 0`` or the denominator vanishes. pytorch-grad-cam adds 1e-6 to the denominator
    of the unsimplified form instead, which shrinks alpha wherever |G| is below ~1e-3.
    """
    total = activations.sum(dim=(2, 3), keepdim=True)
    denominator = torch.where(gradients != 0, 2 + total * gradients,
                              torch.zeros_like(gradients))
    alpha = _safe_divide(torch.ones_like(gradients), denominator)
    weights = (gradients.clamp_min(0) * alpha).sum(dim=(2, 3), keepdim=True)
    return _weighted_sum(weights, activations, relu)


# ---- CAMs that need activations only (and maybe more forward passes) -------------------------

def capture_layers(problem: Problem, setup: Callable[[HookSession], Any] | None = None,
                   refuse_tokens: str | None = None
                   ) -> tuple[list[torch.Tensor], list[int], torch.Tensor, Any]:
    """One gradient-free forward pass recording every requested layer's activation.

    Args:
        problem: The call's problem (model, input, target, layers).
        setup: Optional ``setup(hooks)`` registering more hooks for the same pass; its
            return value is handed back.
        refuse_tokens: Why the method cannot use token outputs; ``None``: token outputs
            ``(N, T, D)`` are returned as patch grids (docs/architecture.md, "Models").

    Returns:
        The activations ``(N, K, h, w)`` (each layer's last call, as the rest of the network
        consumed it), how many times each layer ran in the pass, the logits, and ``setup``'s
        return value. The target is resolved from these logits.
    """
    names, modules = problem.layer_names(), problem.modules()
    with torch.no_grad(), HookSession() as hooks:
        captures = [hooks.capture(module, name) for module, name in zip(modules, names)]
        extra = setup(hooks) if setup is not None else None
        logits = problem.forward(problem.x)
    problem.indices(logits)
    captured = [capture.output for capture in captures]
    layouts = feature_map_layouts(names, captured, problem.x, refuse_tokens)
    activations = [as_grid(a, lay) for a, lay in zip(captured, layouts)]
    return activations, [len(capture.outputs) for capture in captures], logits, extra


def _check_positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodError(f"{name} must be a positive integer, got {value!r}")
    return value


def _small_eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``eigh`` of small Gram matrices, done on the CPU.

    On CUDA, batched ``eigh`` of many small matrices made this step 8x a forward pass on an
    H100 (benchmarks/results/cuda.md); the matrices are at most min(K, hw)^2 per image
    (49 x 49 for a 7 x 7 layer), so the round trip to the CPU costs microseconds.
    """
    values, vectors = torch.linalg.eigh(gram.cpu())
    return values.to(gram.device), vectors.to(gram.device)


def principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """Per image, the positions' projection on the first principal component of the channels.

    The activation of one image is read as ``h*w`` observations of ``K`` features, centred
    over positions. The first right singular vector ``v`` comes from a batched symmetric
    eigendecomposition of the smaller Gram matrix (``K x K``, or ``hw x hw`` with
    ``M v = sqrt(lambda) u``), in one call for the whole batch, on the tensor's device.

    Sign convention: a principal component has no sign, so we orient each map so that its
    inner product with the (centred) mean activation over channels is non-negative: the
    highlighted region is where the features fire, not where they are silent.
    pytorch-grad-cam leaves the sign to the SVD routine (and then clips at 0), so its map
    is sometimes the complement of ours.
    """
    n, k, h, w = activations.shape
    work = torch.float64 if activations.dtype == torch.float64 else torch.float32
    m = activations.to(work).flatten(2).transpose(1, 2)  # (N, hw, K)
    m = m - m.mean(dim=1, keepdim=True)
    if k <= h * w:
        _, vectors = _small_eigh(m.transpose(1, 2) @ m)
        projection = (m @ vectors[..., -1:]).squeeze(-1)
    else:
        values, vectors = _small_eigh(m @ m.transpose(1, 2))
        projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    flip = (projection * m.mean(dim=2)).sum(dim=1, keepdim=True) < 0
    projection = torch.where(flip, -projection, projection)
    return projection.view(n, 1, h, w).to(activations.dtype)


@register("eigencam", family="cam", space="layer", signed=True,
          reference="Muhammad & Yeasin 2020, Eigen-CAM",
          summary="projection of the layer's activations on their first principal component "
                  "(class-agnostic)")
def eigencam(problem: Problem, *, relu: bool = False) -> torch.Tensor:
    """The first principal component of the layer's activations, per image.

    One gradient-free forward pass and a batched eigendecomposition (see
    :func:`principal_projection` for the sign convention). The map does not depend on the
    target class (as in the paper); the target is still validated. ``relu=False`` by default:
    the paper applies none, and presentation shows the positive side.
    """
    activations, _, _, _ = capture_layers(problem)
    maps = [principal_projection(a) for a in activations]
    return combine_layers([m.clamp_min(0) if relu else m for m in maps])


def _final_linear(hooks: HookSession, model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Record the ``nn.Linear`` modules in the order they run; the last one is the head."""
    fired: list[tuple[str, nn.Linear]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            hooks.forward_hook(module, lambda m, _i, _o, name=name: fired.append((name, m)))
    return fired


@register("cam", family="cam", space="layer", signed=True,
          needs_class_index="applies the class's row of the last linear layer's weights",
          reference="Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
          summary="the classifier's weights for the target applied to the last feature map")
def cam(problem: Problem, *, relu: bool = False) -> torch.Tensor:
    """CAM_c = sum_k W[c, k] A_k, for networks ending in global average pooling + a linear layer.

    The head is the last ``nn.Linear`` that runs. Instead of inspecting the architecture we
    check the identity that makes CAM meaningful: the logits must equal
    ``mean_ij(A) @ W.T + b`` (dropout, flatten and pooling may sit in between; anything
    else breaks it). Then ``mean_ij(CAM_c) + b_c`` is exactly the target's logit, and
    Grad-CAM on the same layer equals ``CAM / (h * w)``. ``relu=False`` by default, as in
    the paper: the raw map decomposes the logit.

    Raises:
        UnsupportedModelError: when the identity does not hold for a layer; use ``gradcam``.
    """
    activations, _, logits, fired = capture_layers(
        problem, lambda hooks: _final_linear(hooks, problem.model))
    if not fired:
        raise UnsupportedModelError(
            f"cam needs a network ending in global average pooling and an nn.Linear layer, "
            f"but no nn.Linear ran in {type(problem.model).__name__}; use 'gradcam', which "
            "needs no particular head"
        )
    head_name, head = fired[-1]
    indices = problem.indices()
    maps = []
    for name, activation in zip(problem.layer_names(), activations):
        weight = head.weight.detach().to(activation.dtype)
        if weight.shape[1] != activation.shape[1]:
            raise UnsupportedModelError(
                f"cam: layer {name!r} has {activation.shape[1]} channels but the last linear "
                f"layer {head_name!r} takes {weight.shape[1]} inputs, so its weights cannot "
                "weight the channels. Choose the last feature map before global pooling, or "
                "use 'gradcam' (equal to CAM up to a constant factor where CAM applies)"
            )
        bias = head.bias.detach().to(activation.dtype) if head.bias is not None else 0
        predicted = activation.mean(dim=(2, 3)) @ weight.T + bias
        error = float((predicted - logits.to(activation.dtype)).abs().max())
        scale = 1 + float(logits.abs().max())
        if not error <= 1e3 * torch.finfo(activation.dtype).eps * scale:
            raise UnsupportedModelError(
                f"cam: the logits are not global-average-pooled {name!r} times the weights of "
                f"the last linear layer {head_name!r} (they differ by up to {error:.3g}), so "
                "something other than pooling, flatten or dropout sits between them. CAM "
                "(Zhou et al. 2016) only applies to such heads: choose the last feature map "
                "before global pooling, or use 'gradcam', which works on any architecture "
                "and equals CAM up to a constant factor where CAM applies"
            )
        maps.append(torch.einsum("nk,nkhw->nhw", weight[indices], activation).unsqueeze(1))
    return combine_layers([m.clamp_min(0) if relu else m for m in maps])


def channel_masks(channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Score-CAM masks: ``(B, h, w)`` channels upsampled to ``size``, min-max scaled to [0, 1].

    Bilinear upsampling with ``align_corners=False`` (pixel centres aligned, as in the
    authors' code; pytorch-grad-cam's ``UpsamplingBilinear2d`` aligns corners). A constant
    channel gives an all-zero mask, never 0 / 0.
    """
    up = F.interpolate(channels.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    low = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - low
    return _safe_divide(up - low, span)


def scorecam_weights(problem: Problem, activation: torch.Tensor, batch_size: int
                     ) -> torch.Tensor:
    """Softmax probability of the target on the input masked by each channel, ``(N, K)``.

    Only non-constant channels cost a pass (a constant channel's mask is undefined; it gets
    weight 0, as in the authors' code). The ``(image, channel)`` pairs run in chunks of
    ``batch_size`` masked inputs under ``torch.no_grad``; masks are built per chunk, so
    memory never holds more than ``batch_size`` of them.
    """
    x = problem.x
    indices = problem.indices()
    flat = activation.flatten(2)
    live = flat.amax(dim=2) > flat.amin(dim=2)
    weights = torch.zeros(activation.shape[:2], dtype=activation.dtype, device=x.device)
    pairs = live.nonzero()
    with torch.no_grad():
        for chunk in pairs.split(batch_size):
            images, channels = chunk[:, 0], chunk[:, 1]
            masks = channel_masks(activation[images, channels].to(x.dtype), tuple(x.shape[-2:]))
            logits = problem.forward(x[images] * masks)
            probabilities = logits.softmax(dim=1).gather(1, indices[images].view(-1, 1))
            weights[images, channels] = probabilities.squeeze(1).to(weights.dtype)
    return weights


@register("scorecam", family="cam", space="layer",
          needs_class_index="weighs channels by the class's softmax probability over all "
                            "classes",
          reference="Wang et al. 2020, Score-CAM",
          summary="channels weighted by the class probability when the input is masked by them")
def scorecam(problem: Problem, *, relu: bool = True, batch_size: int = 64) -> torch.Tensor:
    """ReLU(sum_k w_k A_k), w_k = softmax(f(x * s(up(A_k))))_c.

    ``up`` is bilinear upsampling to the input size and ``s`` min-max scaling to [0, 1];
    the weight is the target's softmax probability on the masked input, as in the authors'
    reference implementation. Cost: one forward, then one pass per non-constant channel
    and image, batched under ``batch_size``.

    Deviations of pytorch-grad-cam (1.5): it scores each masked input by the target's
    *logit* and turns the ``K`` logits into weights with a softmax over channels; it
    upsamples with aligned corners and keeps constant channels (with a ~0 mask).
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    activations, _, _, _ = capture_layers(problem)
    maps = [_weighted_sum(scorecam_weights(problem, a, batch_size)[:, :, None, None], a, relu)
            for a in activations]
    return combine_layers(maps)


class _Replacement:
    """Forward hook replacing a layer's output on its ``call``-th call of each pass."""

    def __init__(self, call: int) -> None:
        self.call = call
        self.count = 0
        self.value: torch.Tensor | None = None

    def arm(self, value: torch.Tensor) -> None:
        """Use ``value`` as the layer's output in the next pass."""
        self.value, self.count = value, 0

    def __call__(self, _module: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor | None:
        self.count += 1
        return self.value if self.count == self.call else None


def _upper_part_broadcasts(problem: Problem, replacement: _Replacement,
                           activation: torch.Tensor, logits: torch.Tensor) -> bool:
    """Can the network above the layer take ``B`` copies while the part below ran on 1 image?

    Every tensor computed below the layer is the same for all copies of one image, so
    broadcasting it from batch 1 is exact wherever torch broadcasts (residual additions,
    elementwise ops). Operations that do not broadcast (concatenation with an earlier
    feature map, reshapes to a fixed batch) fail or change the shape; we try once with two
    unablated copies and require both to reproduce the image's logits.
    """
    replacement.arm(activation[:1].expand(2, *activation.shape[1:]).clone())
    try:
        out = problem.forward(problem.x[:1])
    except (ConvlensError, RuntimeError, ValueError, TypeError, IndexError):
        return False
    if out.shape != (2, logits.shape[1]):
        return False
    tolerance = torch.finfo(logits.dtype).eps ** 0.5 * (1 + float(logits.abs().max()))
    return bool(((out - logits[:1]).abs() <= tolerance).all())


def ablation_drops(problem: Problem, module: nn.Module, activation: torch.Tensor, calls: int,
                   logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``y_c - y_c(channel k zeroed)`` for every image and channel, shape ``(N, K)``.

    The layer's output (its last call in the pass, ``calls``) is replaced by a batch of
    copies of the activation, each with one channel zeroed. The part of the network below
    the layer cannot be skipped without splitting the model, but when the part above
    broadcasts (see :func:`_upper_part_broadcasts`) it runs on the single image while the
    ``batch_size`` ablated copies go through the part above only. Otherwise the part below
    runs on ``batch_size`` copies of the image too (the cost of pytorch-grad-cam's
    implementation). All-zero channels are skipped: zeroing them changes nothing.
    """
    x = problem.x
    indices = problem.indices()
    scores = logits.gather(1, indices.view(-1, 1)).squeeze(1).to(activation.dtype)
    drops = torch.zeros(activation.shape[:2], dtype=activation.dtype, device=x.device)
    live = activation.flatten(2).ne(0).any(dim=2)
    with torch.no_grad(), HookSession() as hooks:
        replacement = _Replacement(calls)
        hooks.forward_hook(module, replacement)
        broadcast = _upper_part_broadcasts(problem, replacement, activation, logits)
        for image in range(activation.shape[0]):
            for chunk in live[image].nonzero().squeeze(1).split(batch_size):
                copies = chunk.numel()
                ablated = activation[image].expand(copies, *activation.shape[1:]).clone()
                ablated[torch.arange(copies, device=x.device), chunk] = 0
                replacement.arm(ablated)
                inputs = x[image:image + 1]
                if not broadcast:
                    inputs = inputs.expand(copies, *x.shape[1:])
                out = problem.forward(inputs)
                if out.shape[0] != copies:
                    raise UnsupportedModelError(
                        f"ablationcam: the model returned {out.shape[0]} outputs for "
                        f"{copies} ablated copies of the layer's activation; use 'scorecam' "
                        "or a gradient CAM"
                    )
                drops[image, chunk] = scores[image] - out[:, indices[image]].to(drops.dtype)
    return drops


@register("ablationcam", family="cam", space="layer",
          reference="Desai & Ramaswamy 2020, Ablation-CAM",
          summary="channels weighted by the relative drop of the target score when zeroed")
def ablationcam(problem: Problem, *, relu: bool = True, batch_size: int = 64) -> torch.Tensor:
    """ReLU(sum_k w_k A_k), w_k = (y_c - y_c with channel k zeroed) / |y_c|.

    We divide by ``|y_c|`` where the paper writes ``y_c``: identical when the target's
    logit is positive (the case the paper considers, the predicted class), and it keeps a
    negative logit from flipping every weight. Where ``|y_c|`` is below the dtype's
    machine epsilon the raw drop is used (no division by ~0).

    Cost: see :func:`ablation_drops`; one pass per image and chunk of ``batch_size``
    channels, in which only the part above the layer runs on the whole chunk when the
    network allows it.

    Deviation of pytorch-grad-cam (1.5): when the layer's activations contain no exact
    zero it "ablates" a channel by setting it to ``min - 1e7`` rather than 0, and it
    divides by the signed ``y_c`` (float32 throughout).
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    activations, calls, logits, _ = capture_layers(problem, refuse_tokens=(
        "ablationcam replaces the layer's output with copies that have one channel zeroed, "
        "which is not implemented for token outputs; use gradcam, layercam or scorecam"))
    scores = logits.gather(1, problem.indices().view(-1, 1))
    maps = []
    for module, activation, count in zip(problem.modules(), activations, calls):
        drops = ablation_drops(problem, module, activation, count, logits, batch_size)
        magnitude = scores.abs().to(drops.dtype)
        small = magnitude <= torch.finfo(drops.dtype).eps
        weights = drops / torch.where(small, torch.ones_like(magnitude), magnitude)
        maps.append(_weighted_sum(weights[:, :, None, None], activation, relu))
    return combine_layers(maps)
