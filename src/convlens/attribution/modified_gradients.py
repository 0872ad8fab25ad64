"""Gradients with modified backward rules: guided backprop, DeconvNet, guided Grad-CAM, DeepLIFT.

The forward pass is the model's own; only what flows backwards through the nonlinearities
changes (see :mod:`convlens.attribution.interception` for how they are found, module or
functional, in place or not, without touching the model). Each method costs one forward
and one backward to the input, like a plain gradient; DeepLIFT adds a gradient-free forward
on the baseline (one sample when the baseline is shared by the batch, as by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convlens._hooks import HookSession
from convlens.attribution.cam import gradcam
from convlens.attribution.core import Problem, combine_layers, register
from convlens.attribution.gradients import make_baseline
from convlens.attribution.interception import (
    RECTIFIER,
    BackwardRule,
    recording_references,
    rectifier_rule,
    refuse_unless_found,
    rescale_rule,
)
from convlens.errors import LayerError

_RECTIFIERS = "ReLU-family activation (ReLU, ReLU6, LeakyReLU)"


def _rectified_gradient(problem: Problem, rule: str, method: str) -> torch.Tensor:
    """d y_c / d x with every rectifier's backward replaced by ``rule``."""
    x = problem.x.detach().requires_grad_(True)
    with rectifier_rule(BackwardRule(rule)) as seen:
        logits = problem.forward(x)
    refuse_unless_found(seen.counts[RECTIFIER], method, _RECTIFIERS)
    problem.indices(logits)
    (grad,) = torch.autograd.grad(problem.scores(logits).sum(), x)
    return grad


@register("guided_backprop", family="gradient", signed=True, channel_reduction="max_abs",
          reference="Springenberg et al. 2015, Striving for Simplicity: The All Convolutional Net",
          summary="gradient in which only positive signals pass back through each ReLU")
def guided_backprop(problem: Problem) -> torch.Tensor:
    """Guided backpropagation: at each ReLU-family activation, backward = g+ * f'(x).

    ``g+`` is the positive part of the incoming gradient, ``f'`` the activation's true
    derivative. For ReLU this is Springenberg's rule ``g * (x > 0) * (g > 0)``; for ReLU6
    it also blocks where ``x >= 6`` (the true derivative there is 0); for LeakyReLU
    positive signals cross negative inputs scaled by the slope (the paper predates it;
    Captum leaves LeakyReLU and ReLU6 with their plain gradient, silently). Other
    nonlinearities (SiLU, sigmoid...) keep their plain gradient; a model with no
    ReLU-family activation is refused (the result would be the plain gradient).
    """
    return _rectified_gradient(problem, "guided", "guided_backprop")


@register("deconvnet", family="gradient", signed=True, channel_reduction="max_abs",
          reference="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
          summary="backward pass in which each ReLU rectifies the signal, ignoring the forward")
def deconvnet(problem: Problem) -> torch.Tensor:
    """DeconvNet: at each ReLU-family activation, backward = ReLU(g), whatever x was.

    Zeiler & Fergus reconstruct through "unpooling" with the forward switches, which is what
    the max-pooling gradient does; ReLU6 and LeakyReLU are rectified the same way (no
    forward mask). A model with no ReLU-family activation is refused.
    """
    return _rectified_gradient(problem, "deconvnet", "deconvnet")


@register("guided_gradcam", family="gradient", signed=True, channel_reduction="max_abs",
          reference="Selvaraju et al. 2017, Grad-CAM (guided Grad-CAM)",
          summary="guided backprop masked by the upsampled Grad-CAM of a layer")
def guided_gradcam(problem: Problem) -> torch.Tensor:
    """Guided backprop times Grad-CAM (with ReLU) upsampled bilinearly to the input size.

    Uses ``layer`` like the CAMs (default: the last spatial layer; several layers are
    averaged after upsampling). One forward pass serves both parts: a plain backward down
    to the layer gives Grad-CAM, then the rectifiers switch to the guided rule for the
    backward to the input, so the cost is the guided backprop's plus the top part of a
    backward.
    """
    names, modules = problem.layer_names(), problem.modules()
    rule = BackwardRule("gradient")
    x = problem.x.detach().requires_grad_(True)
    with HookSession() as hooks, rectifier_rule(rule) as seen:
        captures = [hooks.capture(m, n) for m, n in zip(modules, names)]
        logits = problem.forward(x)
    refuse_unless_found(seen.counts[RECTIFIER], "guided_gradcam", _RECTIFIERS)
    problem.indices(logits)
    score = problem.scores(logits).sum()
    activations = [c.output for c in captures]
    for name, act in zip(names, activations):
        if act.dim() != 4 or not act.requires_grad:
            raise LayerError(
                f"layer {name!r} outputs shape {tuple(act.shape)}"
                f"{'' if act.requires_grad else ' that the score does not depend on'}; "
                "guided Grad-CAM needs a (N, C, H, W) feature map below the output. "
                "Choose a convolutional layer (see `convlens layers`)"
            )
    grads = torch.autograd.grad(score, activations, retain_graph=True, allow_unused=True)
    cam = combine_layers([
        gradcam(a.detach(), torch.zeros_like(a) if g is None else g) for a, g in
        zip(activations, grads)
    ])
    rule.name = "guided"
    (guided,) = torch.autograd.grad(score, x)
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return guided * cam


_NONLINEARITIES = "nonlinearity it can rescale (ReLU family, sigmoid, tanh, SiLU, GELU, ...)"


def _shared_or_per_sample(baseline: object, x: torch.Tensor) -> torch.Tensor:
    """The baseline as one sample ``(1, C, H, W)`` when it is shared, else ``(N, C, H, W)``."""
    if isinstance(baseline, torch.Tensor) and baseline.dim() == 4 and baseline.shape[0] > 1:
        return make_baseline(baseline, x).contiguous()
    return make_baseline(baseline, x[:1]).contiguous()


@register("deeplift", family="gradient", signed=True,
          reference="Shrikumar, Greenside, Kundaje 2017, Learning Important Features Through "
                    "Propagating Activation Differences (rescale rule)",
          summary="contributions of (x - baseline) that add up to y_c(x) - y_c(baseline)")
def deeplift(problem: Problem, *, baseline: object = None) -> torch.Tensor:
    """DeepLIFT with the rescale rule: (x - x0) * multipliers, which sum to y_c(x) - y_c(x0).

    At each elementwise nonlinearity the backward multiplies by ``(f(x) - f(x0)) /
    (x - x0)`` instead of ``f'(x)``, falling back to ``f'(x)`` where ``|x - x0| < 1e-6``
    (Captum does the same with 1e-10 by default). ``x0`` values come from a gradient-free
    forward pass on the baseline that records every nonlinearity's input, call by call;
    when the baseline is shared by the batch (zeros by default, a number, or a single
    image), that pass runs on one sample. Max pooling uses a rescale rule too (see
    :class:`convlens.attribution.interception._RescaleMaxPool`), so summation-to-delta is
    exact for networks made of linear layers (conv, linear, BatchNorm in eval mode,
    average pooling, residual sums), rectifiers, smooth elementwise nonlinearities and
    max pooling. It is not exact across multiplicative interactions (squeeze-and-excitation
    gates, attention), which get the product rule of the gradient.

    Compared with Captum's DeepLift (0.9): the same multipliers where Captum is exact; ours
    also handles ReLU6, SiLU, GELU, Hardswish, functional activations, in-place ReLUs and
    modules called twice (Captum raises on reuse and silently uses the gradient for
    activations it does not know), nothing is set on the model, and two hooked modules in
    a row (ReLU -> MaxPool, as in VGG) stay exact where Captum's summation-to-delta breaks.
    The RevealCancel rule is not implemented.

    Args:
        baseline: None (zeros), a number, a single image ``(C, H, W)`` / ``(1, C, H, W)``,
            or one baseline per sample ``(N, C, H, W)``.

    Example:
        >>> a = attribute(model, x, "deeplift", target=3)                # doctest: +SKIP
        >>> a.sum(dim=(1, 2, 3))  # == model(x)[:, 3] - model(zeros)[:, 3]  # doctest: +SKIP
    """
    x = problem.x
    x0 = _shared_or_per_sample(baseline, x)
    with torch.no_grad(), recording_references() as references:
        problem.forward(x0)
    refuse_unless_found(len(references), "deeplift", _NONLINEARITIES)
    inputs = x.detach().requires_grad_(True)
    with rescale_rule(references):
        logits = problem.forward(inputs)
    problem.indices(logits)
    (grad,) = torch.autograd.grad(problem.scores(logits).sum(), inputs)
    return (x - x0) * grad
