"""Guided backprop, DeconvNet, guided Grad-CAM and DeepLIFT against their definitions.

References are written layer by layer from the papers (a sequential network, its layers'
inputs recorded, the backward pass done by hand with ``vjp`` for linear layers and the
paper's rule at each nonlinearity) and compared in float64. Captum is the peer.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import FunctionalReLUNet, LinearNet, RaisingNet, TinyResNet, TinyVGG, seeded
from torch import nn
from torch.autograd.functional import vjp

import convlens as cl
from convlens.errors import UnsupportedModelError


@pytest.fixture(scope="module")
def captum_attr():
    """Captum's attribution module; only the comparisons with the peer skip without it."""
    return pytest.importorskip("captum.attr")

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.ELU,
               nn.Softplus, nn.Hardswish, nn.Mish)


def _x(n: int = 2, size: int = 8, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, 3, size, size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(seed))


def _derivative(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f'(x) as torch defines it (0 at the kinks of ReLU, slope at 0 for LeakyReLU)."""
    if isinstance(layer, nn.ReLU):
        return (x > 0).double()
    if isinstance(layer, nn.ReLU6):
        return ((x > 0) & (x < 6)).double()
    if isinstance(layer, nn.LeakyReLU):
        return torch.where(x > 0, 1.0, layer.negative_slope).double()
    return vjp(layer, x, torch.ones_like(x))[1]


def _layers_forward(layers: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    inputs = []
    with torch.no_grad():
        for layer in layers:
            inputs.append(x.clone())  # in-place layers would overwrite it
            x = layer(x)
    return inputs + [x]


def _one_hot(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.one_hot(target, logits.shape[1]).to(logits.dtype)


def reference_rectified(net: nn.Sequential, x: torch.Tensor, target: torch.Tensor,
                        rule: str) -> torch.Tensor:
    """Springenberg 2015 (guided) / Zeiler 2014 (deconvnet), layer by layer."""
    layers = list(net)
    inputs = _layers_forward(layers, x)
    grad = _one_hot(inputs[-1], target)
    for layer, inp in zip(reversed(layers), reversed(inputs[:-1])):
        if isinstance(layer, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)):
            grad = grad.clamp(min=0) * (_derivative(layer, inp) if rule == "guided" else 1)
        else:
            grad = vjp(layer, inp, grad)[1]
    return grad


def _maxpool_rescale(layer: nn.MaxPool2d, x: torch.Tensor, x0: torch.Tensor,
                     grad: torch.Tensor) -> torch.Tensor:
    """The conservative max-pool rule, window by window with Python loops."""
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    pad = (p, p, p, p)
    xp, x0p = F.pad(x, pad, value=-float("inf")), F.pad(x0, pad, value=-float("inf"))
    spread = torch.zeros_like(xp)
    plain = torch.zeros_like(xp)
    n, c, oh, ow = grad.shape
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = xp[b, ch, i * s:i * s + k, j * s:j * s + k]
                    win0 = x0p[b if x0.shape[0] > 1 else 0, ch, i * s:i * s + k, j * s:j * s + k]
                    a, a0 = divmod(int(win.argmax()), k), divmod(int(win0.argmax()), k)
                    y, y0 = win.max(), win0.max()
                    top = torch.maximum(y, y0)
                    g = grad[b, ch, i, j]
                    spread[b, ch, i * s + a[0], j * s + a[1]] += g * (top - y0)
                    spread[b, ch, i * s + a0[0], j * s + a0[1]] += g * (y - top)
                    plain[b, ch, i * s + a[0], j * s + a[1]] += g
    crop = (slice(None), slice(None), slice(p, xp.shape[2] - p), slice(p, xp.shape[3] - p))
    delta = x - x0
    small = delta.abs() < 1e-6
    return torch.where(small, plain[crop], spread[crop] / delta.masked_fill(small, 1.0))


def reference_deeplift(net: nn.Sequential, x: torch.Tensor, x0: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """Shrikumar et al. 2017, rescale rule, layer by layer: (x - x0) * multipliers."""
    layers = list(net)
    inputs, refs = _layers_forward(layers, x), _layers_forward(layers, x0)
    grad = _one_hot(inputs[-1], target)
    for index in reversed(range(len(layers))):
        layer, inp, ref = layers[index], inputs[index], refs[index]
        if isinstance(layer, ACTIVATIONS):
            delta = inp - ref
            small = delta.abs() < 1e-6
            with torch.no_grad():
                secant = (layer(inp) - layer(ref)) / delta.masked_fill(small, 1.0)
            grad = grad * torch.where(small, _derivative(layer, inp), secant)
        elif isinstance(layer, nn.MaxPool2d):
            grad = _maxpool_rescale(layer, inp, ref, grad)
        else:
            grad = vjp(layer, inp, grad)[1]
    return (x - x0) * grad


def rectifier_net() -> nn.Sequential:
    """ReLU, ReLU6 (clipping actually happens), LeakyReLU, BatchNorm, both poolings."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1), nn.LeakyReLU(0.2), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4, 4),
    )
    return seeded(net)


def _clipped_fraction(net: nn.Sequential, x: torch.Tensor) -> float:
    inputs = _layers_forward(list(net), x)
    return float((inputs[2] >= 6).double().mean())


# ---- guided backprop and deconvnet --------------------------------------------------------

@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rectified_gradients_match_the_layer_by_layer_definition(rule: str) -> None:
    net, x = rectifier_net(), _x(2, 8, scale=3.0)
    assert 0.01 < _clipped_fraction(net, x) < 0.9  # the ReLU6 clip is exercised
    target = torch.tensor([1, 3])
    method = "guided_backprop" if rule == "guided" else "deconvnet"
    got = cl.attribute(net, x, method, target=target)
    expected = reference_rectified(copy.deepcopy(net), x, target, rule)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_rectified_gradients_match_captum_on_a_plain_relu_net(captum_attr, method: str) -> None:
    model, x = seeded(TinyVGG(inplace=False)), _x(3, 16)
    target = torch.tensor([0, 2, 4])
    peer = {"guided_backprop": captum_attr.GuidedBackprop,
            "deconvnet": captum_attr.Deconvolution}[method]
    expected = peer(model).attribute(x.clone().requires_grad_(), target=target)
    got = cl.attribute(model, x, method, target=target)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


def test_guided_backprop_handles_inplace_relus_called_twice(captum_attr) -> None:
    """TinyResNet calls one ReLU(inplace=True) module twice per block."""
    model, x = seeded(TinyResNet()), _x(2, 16)
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    got = cl.attribute(model, x, "guided_backprop", target=1)
    expected = captum_attr.GuidedBackprop(plain).attribute(x.clone().requires_grad_(), target=1)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, cl.attribute(model, x, "input_x_gradient", target=1) / x.float())


def _gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad


def test_functional_relus_are_rectified_not_silently_plain() -> None:
    """Module hooks cannot see F.relu; Captum returns the plain gradient here."""
    model, x = seeded(FunctionalReLUNet()), _x(2, 8)
    assert (model.fc.weight[1] < 0).any()  # some negative signal for the rule to block
    got = cl.attribute(model, x, "guided_backprop", target=1).double()
    # The definition: conv -> relu -> spatial mean -> fc, guided rule at the relu.
    conv = model.conv(x)
    grad_relu = (model.fc.weight[1].view(1, -1, 1, 1) / conv[0, 0].numel()).expand_as(conv)
    expected = vjp(model.conv, x, grad_relu.clamp(min=0) * (conv > 0))[1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert (got - _gradient(model, x, 1)).abs().max() > 0.1 * got.abs().max()


def test_relu6_clip_blocks_guided_signals_unlike_the_plain_gradient() -> None:
    net, x = rectifier_net(), _x(2, 8, scale=3.0)
    got = cl.attribute(net, x, "guided_backprop", target=0).double()
    assert (got - _gradient(net, x, 0)).abs().max() > 0.1 * got.abs().max()
    relu6_only = seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(),
                                      nn.Flatten(), nn.Linear(4 * 64, 3)))
    assert not torch.allclose(cl.attribute(relu6_only, x, "guided_backprop", target=0).double(),
                              _gradient(relu6_only, x, 0).float().double())


class InplaceSideEffectNet(nn.Module):
    """Relies on in-place side effects: ``h.relu_()`` and ``F.relu_`` results are discarded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h.relu_()
        h = self.conv2(h)
        F.leaky_relu_(h, 0.1)
        return self.fc(h.mean(dim=(2, 3)))


class OutOfPlaceNet(InplaceSideEffectNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv2(torch.relu(self.conv1(x))), 0.1)
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "deeplift"])
def test_inplace_functional_activations_keep_their_side_effect(method: str) -> None:
    inplace, x = seeded(InplaceSideEffectNet()), _x(2, 8)
    outplace = OutOfPlaceNet().double()
    outplace.load_state_dict(inplace.state_dict())
    got = cl.attribute(inplace, x, method, target=1)
    torch.testing.assert_close(got, cl.attribute(outplace, x, method, target=1))


class SiLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.silu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_gradcam"])
@pytest.mark.parametrize("model", [SiLUNet, LinearNet], ids=["silu", "linear"])
def test_a_model_without_rectifiers_is_refused(method: str, model: type) -> None:
    if method == "guided_gradcam" and model is LinearNet:
        pytest.skip("no spatial layer: refused earlier, by the layer lookup")
    with pytest.raises(UnsupportedModelError, match="plain gradient"):
        cl.attribute(seeded(model()), _x(1, 4), method, target=0)


def test_scripted_models_are_refused_not_silently_plain() -> None:
    scripted = torch.jit.script(seeded(TinyVGG(), dtype=torch.float32))
    for method in ("guided_backprop", "deeplift"):
        with pytest.raises(UnsupportedModelError, match="TorchScript"):
            cl.attribute(scripted, _x(1, 8).float(), method, target=0)


def test_the_interception_ends_with_the_call_even_when_the_model_raises() -> None:
    with pytest.raises(Exception, match="boom"):
        cl.attribute(RaisingNet(), _x(1, 8).float(), "guided_backprop", target=0)
    assert torch._C._len_torch_function_stack() == 0
    x = torch.randn(4, requires_grad=True)
    (grad,) = torch.autograd.grad(F.relu(x).sum() * -1, x)  # a plain ReLU again
    torch.testing.assert_close(grad, -(x > 0).float())


# ---- guided Grad-CAM ----------------------------------------------------------------------

def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam() -> None:
    model, x = seeded(TinyVGG()), _x(2, 16)
    target = torch.tensor([1, 3])
    got = cl.attribute(model, x, "guided_gradcam", target=target, layer="features.5")
    cam = cl.attribute(model, x, "gradcam", target=target, layer="features.5")
    guided = cl.attribute(model, x, "guided_backprop", target=target)
    upsampled = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, guided * upsampled)
    assert cam.shape[-1] == 8 and (cam == 0).any() and (cam > 0).any()


def test_guided_gradcam_matches_captum(captum_attr) -> None:
    model, x = seeded(TinyVGG(inplace=False)), _x(3, 16)
    target = torch.tensor([0, 2, 4])
    expected = captum_attr.GuidedGradCam(model, model.features[5]).attribute(
        x.clone().requires_grad_(), target=target, interpolate_mode="bilinear")
    got = cl.attribute(model, x, "guided_gradcam", target=target, layer="features.5")
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-7)


# ---- DeepLIFT -----------------------------------------------------------------------------

def smooth_net() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, padding=1)]
    for act in (nn.Tanh(), nn.SiLU(), nn.GELU(), nn.ELU(), nn.Softplus(), nn.Hardswish(),
                nn.Mish(), nn.Sigmoid()):
        layers += [act, nn.Conv2d(6, 6, 1)]
    return seeded(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(6, 3)))


@pytest.mark.parametrize("net", [rectifier_net, smooth_net], ids=["rectifiers", "smooth"])
def test_deeplift_matches_the_layer_by_layer_definition(net) -> None:
    model, x, x0 = net(), _x(2, 8, scale=3.0), _x(1, 8, seed=7)
    target = torch.tensor([2, 0])
    got = cl.attribute(model, x, "deeplift", target=target, baseline=x0)
    expected = reference_deeplift(copy.deepcopy(model), x, x0, target)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


def _delta(model: nn.Module, x: torch.Tensor, x0: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, target] - model(x0.expand_as(x))[:, target]


@pytest.mark.parametrize("name,model", [
    ("vgg: in-place ReLU, max pooling", lambda: seeded(TinyVGG())),
    ("resnet: BatchNorm, residuals, ReLU reused", lambda: seeded(TinyResNet())),
    ("functional relu", lambda: seeded(FunctionalReLUNet())),
    ("relu6, leaky, overlapping max pool", rectifier_net),
    ("smooth nonlinearities", smooth_net),
])
def test_deeplift_sums_to_the_output_difference(name: str, model) -> None:
    model, x = model(), _x(3, 8, scale=2.0)
    for x0 in (torch.zeros(1, 3, 8, 8, dtype=torch.float64), _x(3, 8, seed=3)):
        got = cl.attribute(model, x, "deeplift", target=1, baseline=x0).double()
        torch.testing.assert_close(got.sum(dim=(1, 2, 3)), _delta(model, x, x0, 1),
                                   rtol=1e-5, atol=1e-5)


def test_deeplift_matches_captum_where_captum_is_exact(captum_attr) -> None:
    """Captum's DeepLift in float64, eps aligned with ours (Captum's default is 1e-10).

    Captum cannot handle in-place ReLUs feeding hooked modules nor reused modules, and its
    hooks go wrong when two hooked modules are adjacent (ReLU -> MaxPool in TinyVGG: its
    convergence delta is then far from 0), so the comparison uses inplace=False and average
    pooling after the ReLU, plus a network where max pooling follows a convolution.
    """
    vgg = seeded(TinyVGG(inplace=False))
    vgg.features[4] = nn.AvgPool2d(2)
    pooled = seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.Conv2d(4, 4, 1),
                                  nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.Sigmoid(),
                                  nn.Conv2d(4, 4, 1), nn.LeakyReLU(0.1), nn.Flatten(),
                                  nn.Linear(4 * 16, 3), nn.Tanh(), nn.Linear(3, 3)))
    for model, size in ((vgg, 16), (pooled, 8)):
        x, x0 = _x(3, size, scale=2.0), _x(1, size, seed=5)
        target = torch.tensor([0, 1, 2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = captum_attr.DeepLift(model, eps=1e-6).attribute(
                x.clone().requires_grad_(), baselines=x0.expand_as(x).clone(), target=target)
        got = cl.attribute(model, x, "deeplift", target=target, baseline=x0)
        torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


def test_deeplift_per_sample_baselines_and_shared_baselines_agree() -> None:
    model, x, x0 = seeded(TinyResNet()), _x(3, 16), _x(1, 16, seed=9)
    shared = cl.attribute(model, x, "deeplift", target=2, baseline=x0)
    per_sample = cl.attribute(model, x, "deeplift", target=2, baseline=x0.repeat(3, 1, 1, 1))
    torch.testing.assert_close(shared, per_sample)
    default = cl.attribute(model, x, "deeplift", target=2)
    torch.testing.assert_close(default, cl.attribute(model, x, "deeplift", target=2,
                                                     baseline=0.0))


def test_deeplift_refuses_a_model_without_nonlinearities() -> None:
    with pytest.raises(UnsupportedModelError, match="deeplift found no nonlinearity"):
        cl.attribute(seeded(LinearNet()), _x(1, 4), "deeplift", target=0)


class BatchDependentNet(nn.Module):
    """Skips its activation for single images: the baseline pass would not line up."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = torch.relu(h) if x.shape[0] > 1 else h
        return self.fc(torch.tanh(h).mean(dim=(2, 3)))


def test_deeplift_refuses_when_the_baseline_pass_runs_other_nonlinearities() -> None:
    with pytest.raises(UnsupportedModelError, match="differs between the two passes"):
        cl.attribute(seeded(BatchDependentNet()), _x(2, 8), "deeplift", target=0)


@pytest.mark.slow
def test_bundled_relu6_model_gets_the_rules_captum_skips() -> None:
    """EfficientNet-Lite0 has only ReLU6: Captum's GuidedBackprop returns the plain gradient
    there and its DeepLift returns x * gradient, whose sum misses y(x) - y(0)."""
    model = cl.load_model(device="cpu").module
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = _gradient(model, x, 5)
    guided = cl.attribute(model, x, "guided_backprop", target=5)
    assert (guided - plain).norm() > 0.5 * plain.norm()
    deeplift = cl.attribute(model, x, "deeplift", target=5).double()
    with torch.no_grad():
        delta = float(model(x)[0, 5] - model(torch.zeros_like(x))[0, 5])
    assert abs(float(deeplift.sum()) - delta) < 1e-4 * max(1.0, abs(delta))
    assert abs(float((x * plain).sum()) - delta) > 0.1 * abs(delta)  # the gradient would miss
