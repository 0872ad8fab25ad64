"""The CAM family against float64 references written from the papers, against
pytorch-grad-cam at the layer's resolution, and its properties.

pytorch-grad-cam (1.5) is compared before its resizing and min-max scaling (its
``scale_cam_image`` is replaced by the identity), on layers NOT followed by an in-place
operation: it stores ``output.cpu().detach()``, which on the CPU shares memory with the
output, so a following ``ReLU(inplace=True)`` silently turns its activation into the
post-ReLU one (we hand the network a copy instead; see tests/attribution/test_core.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import assert_close_to_reference
from tiny_models import FunctionalReLUNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens.attribution.cam import gradcam_plus_plus, principal_projection, xgradcam
from convlens.errors import UnsupportedModelError

GRADIENT_CAMS = ["gradcam", "hirescam", "xgradcam", "layercam", "gradcam_plus_plus"]


def _x(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


_close = assert_close_to_reference


# ---- hook-free forward passes split at a layer ------------------------------------------------
# Each returns (activation, head) where head(activation) gives the logits, so references can
# take gradients and ablate channels without any hook.

def _vgg_split(model: TinyVGG, x: torch.Tensor, layer: str):
    cut = {"features": 8, "features.3": 4, "features.6": 7}[layer]
    activation = model.features[:cut](x)
    rest = model.features[cut:]

    def head(a: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.pool(rest(a.clone())))

    return activation.detach(), head


def _resnet_split(model: TinyResNet, x: torch.Tensor, layer: str):
    """Layers: 'layer1', 'layer2' (= 'layer2.relu', the last call of a ReLU used twice),
    'layer2.bn2' (inside the residual block: the skip branch is computed below the layer)."""
    h = model.layer1(model.stem(x))
    tail = lambda y: model.fc(torch.flatten(model.pool(y), 1))  # noqa: E731
    block = model.layer2
    if layer == "layer1":
        return h.detach(), lambda a: tail(block(a.clone()))
    if layer in ("layer2", "layer2.relu"):
        return block(h).detach(), tail
    assert layer == "layer2.bn2"
    identity = block.downsample(h)
    inner = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h)))))
    return inner.detach(), lambda a: tail(torch.relu(a + identity))


def _split(model: nn.Module, x: torch.Tensor, layer: str):
    return (_vgg_split if isinstance(model, TinyVGG) else _resnet_split)(model, x, layer)


def _activations_and_gradients(model, x, layer, target):
    activation, head = _split(model, x, layer)
    activation = activation.clone().requires_grad_(True)
    logits = head(activation)
    (gradient,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), activation)
    return activation.detach(), gradient, head


# ---- references, written from the papers with explicit loops ----------------------------------

def _weighted(weights, a, relu=True):
    """sum_k weights[n, k] * A[n, k] (weights may be per position), then ReLU."""
    out = torch.zeros(a.shape[0], 1, *a.shape[2:], dtype=a.dtype)
    for k in range(a.shape[1]):
        out[:, 0] += weights[:, k] * a[:, k]
    return out.clamp_min(0) if relu else out


def reference_gradient_cam(name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, k = a.shape[:2]
    if name == "gradcam":
        w = torch.stack([g[:, c].mean(dim=(1, 2)) for c in range(k)], 1)[:, :, None, None]
    elif name == "hirescam":
        w = g
    elif name == "layercam":
        w = g.clamp_min(0)
    elif name == "xgradcam":
        w = torch.zeros(n, k, 1, 1, dtype=a.dtype)
        for i in range(n):
            for c in range(k):
                w[i, c] = (g[i, c] * a[i, c]).sum() / (a[i, c].sum() + 1e-7)
    elif name == "gradcam_plus_plus":
        w = torch.zeros(n, k, 1, 1, dtype=a.dtype)
        for i in range(n):
            for c in range(k):
                s = a[i, c].sum()
                for gij in g[i, c].flatten():
                    if gij != 0:
                        alpha = gij**2 / (2 * gij**2 + s * gij**3)
                        w[i, c] += torch.relu(gij) * alpha
    return _weighted(w, a)


def reference_eigencam(a: torch.Tensor) -> torch.Tensor:
    """SVD of the centred (positions x channels) matrix; sign unresolved."""
    maps = []
    for i in range(a.shape[0]):
        m = a[i].flatten(1).T
        m = m - m.mean(0)
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        maps.append((m @ vh[0]).view(1, *a.shape[2:]))
    return torch.stack(maps)


def reference_scorecam(a, x, model, target):
    weights = torch.zeros(a.shape[:2], dtype=a.dtype)
    for i in range(a.shape[0]):
        for k in range(a.shape[1]):
            up = F.interpolate(a[i, k][None, None], size=x.shape[-2:], mode="bilinear",
                               align_corners=False)[0, 0]
            if up.max() == up.min():
                continue  # constant channel: weight 0, as in the authors' code
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                weights[i, k] = model(x[i:i + 1] * mask).softmax(1)[0, target[i]]
    return _weighted(weights[:, :, None, None], a)


def reference_ablationcam(a, head, target):
    with torch.no_grad():
        y = head(a).gather(1, target.view(-1, 1))[:, 0]
        weights = torch.zeros(a.shape[:2], dtype=a.dtype)
        for k in range(a.shape[1]):
            ablated = a.clone()
            ablated[:, k] = 0
            y_k = head(ablated).gather(1, target.view(-1, 1))[:, 0]
            weights[:, k] = (y - y_k) / y.abs()
    return _weighted(weights[:, :, None, None], a)


# ---- gradient CAMs ---------------------------------------------------------------------------

CASES = [(TinyVGG, "features"), (TinyVGG, "features.3"), (TinyResNet, "layer1"),
         (TinyResNet, "layer2.relu"), (TinyResNet, "layer2.bn2")]


@pytest.mark.parametrize(("factory", "layer"), CASES)
def test_gradient_cams_match_their_definitions(factory, layer: str) -> None:
    model = seeded(factory())
    x, target = _x(), torch.tensor([0, 3, 4])
    got = cl.attribute(model, x, GRADIENT_CAMS, target=target, layer=layer)
    a, g, _ = _activations_and_gradients(model, x, layer, target)
    for name in GRADIENT_CAMS:
        _close(got[name], reference_gradient_cam(name, a, g))


def test_gradient_cams_together_run_one_forward_and_equal_each_alone() -> None:
    model = seeded(TinyResNet())
    x = _x(2)
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        together = cl.attribute(model, x, GRADIENT_CAMS, target=[1, 2], layer="layer1")
    finally:
        handle.remove()
    assert len(calls) == 1
    for name in GRADIENT_CAMS:
        alone = cl.attribute(model, x, name, target=[1, 2], layer="layer1")
        assert torch.equal(together[name], alone), name


def test_zero_denominators_give_zero_weights_not_nan() -> None:
    a = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    a[0, 0, 0, 0] = -1e-7          # xgradcam: sum_ij A + 1e-7 == 0 exactly
    a[0, 1] = 0.5                  # gradcam++: 2 + sum_ij(A) * g == 0 where g == -1
    g = torch.zeros_like(a)
    g[0, 0] = 1.0
    g[0, 1] = torch.tensor([[-1.0, 2.0], [0.0, 1e-30]])
    assert float((a[0, 0].sum() + 1e-7).abs()) == 0
    for combine in (xgradcam, gradcam_plus_plus):
        out = combine(a, g, relu=False)
        assert torch.isfinite(out).all()
    # gradcam++ channel 1: alpha = 1 / (2 + 2 g) at g = 2 and 1e-30, 0 at g = -1 and g = 0;
    # the squared form would underflow to 0 / 0 at g = 1e-30.
    expected_w1 = 2.0 / (2 + 2 * 2.0) + 1e-30 / (2 + 2 * 1e-30)
    torch.testing.assert_close(gradcam_plus_plus(a[:, 1:2], g[:, 1:2], relu=False),
                               expected_w1 * a[:, 1:2].sum(1, keepdim=True))
    torch.testing.assert_close(xgradcam(a[:, :1], g[:, :1], relu=False), torch.zeros(1, 1, 2, 2,
                               dtype=torch.float64))


class ZeroLayerNet(nn.Module):
    """A feature layer whose output is exactly zero everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dead = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dead(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", GRADIENT_CAMS + ["eigencam", "cam", "scorecam",
                                                    "ablationcam"])
def test_all_zero_activations_give_a_zero_map(method: str) -> None:
    model = ZeroLayerNet().double()
    got = cl.attribute(model, _x(2), method, target=0, layer="dead")
    assert torch.equal(got, torch.zeros(2, 1, 16, 16))


# ---- CAM (Zhou 2016) -----------------------------------------------------------------------

@pytest.mark.parametrize(("factory", "layer", "head"), [
    (TinyVGG, "features", "classifier.1"), (TinyResNet, "layer2", "fc"),
    (TinyResNet, "layer2.relu", "fc")])
def test_cam_is_the_head_weights_and_decomposes_the_logit(factory, layer, head) -> None:
    model = seeded(factory())
    x, target = _x(), torch.tensor([4, 0, 2])
    got = cl.attribute(model, x, "cam", target=target, layer=layer)
    a, _ = _split(model, x, layer)
    linear = model.get_submodule(head)
    expected = torch.zeros(3, 1, *a.shape[2:], dtype=torch.float64)
    for i in range(3):
        for k in range(a.shape[1]):
            expected[i, 0] += linear.weight[target[i], k] * a[i, k]
    _close(got, expected.detach())
    with torch.no_grad():
        logits = model(x).gather(1, target.view(-1, 1))[:, 0]
    _close(got.double().mean(dim=(1, 2, 3)) + linear.bias[target].detach(), logits)


@pytest.mark.parametrize(("factory", "layer"), [(TinyVGG, "features"), (TinyResNet, "layer2")])
def test_gradcam_equals_cam_over_the_number_of_positions(factory, layer: str) -> None:
    model = seeded(factory())
    x = _x()
    cam = cl.attribute(model, x, "cam", layer=layer)
    grad = cl.attribute(model, x, "gradcam", layer=layer, relu=False)
    h, w = cam.shape[-2:]
    _close(grad * (h * w), cam)


class ConvHeadNet(nn.Module):
    """Classifier made of a 1x1 convolution and pooling: no linear layer at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x))).mean(dim=(2, 3))


@pytest.mark.parametrize(("model", "layer", "match"), [
    (seeded(TinyVGG()), "features.5", "something other than pooling"),   # ReLU after the layer
    (seeded(TinyVGG()), "features.4", "channels"),                        # 8 channels vs 16
    (seeded(FunctionalReLUNet()), "conv", "something other than pooling"),
    (seeded(ConvHeadNet()), "conv", "no nn.Linear"),
])
def test_cam_refuses_architectures_it_does_not_fit_and_suggests_gradcam(model, layer, match):
    with pytest.raises(UnsupportedModelError, match=match) as info:
        cl.attribute(model, _x(1), "cam", layer=layer)
    assert "gradcam" in str(info.value)


# ---- Eigen-CAM -------------------------------------------------------------------------------

@pytest.mark.parametrize(("factory", "layer", "size"), [
    (TinyVGG, "features", 16),     # K = 16 channels <= 16 positions: K x K Gram matrix
    (TinyVGG, "features", 8),      # K = 16 > 4 positions: positions x positions Gram matrix
    (TinyResNet, "layer2.relu", 16)])
def test_eigencam_is_the_first_principal_component_with_our_sign(factory, layer, size) -> None:
    model = seeded(factory())
    x = _x(4, size)
    got = cl.attribute(model, x, "eigencam", layer=layer)
    a, _ = _split(model, x, layer)
    reference = reference_eigencam(a)
    centred = a - a.mean(dim=(2, 3), keepdim=True)
    for i in range(4):
        sign = 1.0 if float((reference[i, 0] * centred[i].mean(0)).sum()) >= 0 else -1.0
        _close(got[i], sign * reference[i])
        assert float((got[i, 0].double() * centred[i].mean(0)).sum()) >= 0


def test_eigencam_runs_one_forward_and_no_backward() -> None:
    model = seeded(TinyResNet())
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        got = cl.attribute(model, _x(2), "eigencam", layer="layer1")
    finally:
        handle.remove()
    assert len(calls) == 1 and not got.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_principal_projection_of_a_rank_one_activation_recovers_its_spatial_pattern() -> None:
    pattern = torch.tensor([[0.0, 1.0], [2.0, 5.0]], dtype=torch.float64)
    loadings = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    a = (loadings[:, None, None] * pattern)[None]
    got = principal_projection(a)[0, 0]
    centred = pattern - pattern.mean()
    expected = centred * loadings.norm() * (1 if loadings.sum() > 0 else -1)
    torch.testing.assert_close(got, expected)


# ---- Score-CAM and Ablation-CAM --------------------------------------------------------------

@pytest.mark.parametrize(("factory", "layer"), [(TinyVGG, "features.6"),
                                                (TinyResNet, "layer2.relu")])
def test_scorecam_matches_its_definition(factory, layer: str) -> None:
    model = seeded(factory())
    x, target = _x(2), torch.tensor([1, 3])
    got = cl.attribute(model, x, "scorecam", target=target, layer=layer, batch_size=5)
    a, _ = _split(model, x, layer)
    _close(got, reference_scorecam(a, x, model, target))


def test_scorecam_gives_constant_channels_weight_zero_without_a_pass() -> None:
    model = ZeroLayerNet().double()
    with torch.no_grad():
        model.conv.weight[1:].normal_(generator=torch.Generator().manual_seed(0))
        model.conv.bias[0] = 2.0          # channel 0: constant 2 everywhere, mask undefined
    x, calls = _x(2), []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        got = cl.attribute(model, x, "scorecam", target=1, layer="conv", batch_size=1)
    finally:
        handle.remove()
    assert len(calls) == 1 + 2 * 3       # the capture pass, then 3 live channels per image
    a = model.conv(x).detach()
    _close(got, reference_scorecam(a, x, model, torch.tensor([1, 1])))


@pytest.mark.parametrize(("factory", "layer"), [(TinyVGG, "features.3"), (TinyVGG, "features"),
                                                (TinyResNet, "layer1"),
                                                (TinyResNet, "layer2.relu"),
                                                (TinyResNet, "layer2.bn2")])
def test_ablationcam_matches_its_definition(factory, layer: str) -> None:
    model = seeded(factory())
    x, target = _x(3), torch.tensor([0, 2, 4])
    got = cl.attribute(model, x, "ablationcam", target=target, layer=layer, batch_size=3)
    a, head = _split(model, x, layer)
    _close(got, reference_ablationcam(a, head, target))


def test_ablationcam_runs_the_part_below_the_layer_on_one_image_per_pass() -> None:
    model = seeded(TinyResNet())
    sizes = []
    handle = model.stem.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        cl.attribute(model, _x(3), "ablationcam", layer="layer2.bn2", batch_size=4)
    finally:
        handle.remove()
    assert sizes[0] == 3 and set(sizes[1:]) == {1}   # capture pass, then single images
    assert len(sizes) == 1 + 1 + 3 * 2               # + the broadcast probe + 8 channels / 4


class ConcatNet(nn.Module):
    """A dense connection across the layer: the part above cannot broadcast a batch of 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(h))
        return self.fc(torch.cat([h, y], dim=1).mean(dim=(2, 3)))


def test_ablationcam_falls_back_to_full_passes_when_the_network_does_not_broadcast() -> None:
    model = seeded(ConcatNet())
    x, target = _x(2), torch.tensor([0, 2])
    got = cl.attribute(model, x, "ablationcam", target=target, layer="conv2", batch_size=3)
    h = torch.relu(model.conv1(x))
    a = model.conv2(h).detach()
    head = lambda z: model.fc(torch.cat([h, torch.relu(z)], 1).mean(dim=(2, 3)))  # noqa: E731
    _close(got, reference_ablationcam(a, head, target))


def test_ablationcam_with_a_zero_target_logit_uses_the_raw_drop() -> None:
    model = seeded(TinyVGG())
    x = _x(1)
    bias = model.classifier[1].bias
    with torch.no_grad():
        bias[2] = 0
        bias[2] = -model(x)[0, 2]
        assert float(model(x)[0, 2]) == 0
    got = cl.attribute(model, x, "ablationcam", target=2, layer="features", relu=False)
    a, head = _split(model, x, "features")
    drops = torch.zeros(1, 16, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        for k in range(16):
            ablated = a.clone()
            ablated[:, k] = 0
            drops[0, k] = -head(ablated)[0, 2]
    assert torch.isfinite(got).all() and got.abs().max() > 0
    _close(got, _weighted(drops, a, relu=False))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_results_do_not_depend_on_the_batch_size(method: str) -> None:
    model = seeded(TinyResNet())
    x = _x(2)
    one = cl.attribute(model, x, method, layer="layer1", batch_size=1)
    many = cl.attribute(model, x, method, layer="layer1", batch_size=100)
    _close(one, many, rtol=1e-6)


@pytest.mark.parametrize("method", ["eigencam", "scorecam", "ablationcam", "cam"])
def test_a_list_of_layers_averages_the_upsampled_maps(method: str) -> None:
    model = seeded(TinyResNet())
    x = _x(2)
    layers = ["layer2", "layer2.relu"] if method == "cam" else ["layer1", "layer2"]
    maps = [cl.attribute(model, x, method, target=1, layer=name) for name in layers]
    both = cl.attribute(model, x, method, target=1, layer=layers)
    size = maps[0].shape[-2:]
    resized = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
    _close(both, (resized[0] + resized[1]) / 2, rtol=1e-6)


# ---- pytorch-grad-cam, at the layer's resolution ---------------------------------------------

def _peer_model(factory) -> nn.Module:
    """Seeded, with logits scaled up and shifted positive.

    Scaling makes gradients large enough that pytorch-grad-cam's 1e-6 in Grad-CAM++'s
    denominator is negligible; positive target logits make its signed division in
    Ablation-CAM agree with ours (we divide by |y_c|).
    """
    model = seeded(factory())
    head = model.fc if isinstance(model, TinyResNet) else model.classifier[1]
    with torch.no_grad():
        head.weight.mul_(1e4)
        head.bias.mul_(1e4).add_(1e5)
    return model


def _peer(monkeypatch, cls, model, layer, x, target, **kwargs):
    from pytorch_grad_cam import base_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    monkeypatch.setattr(base_cam, "scale_cam_image", lambda cam, target_size=None: cam)
    with cls(model, [model.get_submodule(layer)], **kwargs) as explainer:
        raw = explainer(x, [ClassifierOutputTarget(int(t)) for t in target])
    return torch.from_numpy(raw).unsqueeze(1).double()


PEER_LAYERS = [(TinyVGG, "features.3"), (TinyResNet, "layer1"), (TinyResNet, "layer2")]


@pytest.mark.parametrize(("factory", "layer"), PEER_LAYERS)
def test_gradient_cams_agree_with_pytorch_grad_cam(monkeypatch, factory, layer: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    peers = {"gradcam": pgc.GradCAM, "hirescam": pgc.HiResCAM, "xgradcam": pgc.XGradCAM,
             "layercam": pgc.LayerCAM, "gradcam_plus_plus": pgc.GradCAMPlusPlus}
    model = _peer_model(factory)
    x, target = _x(), torch.tensor([0, 3, 4])
    ours = cl.attribute(model, x, list(peers), target=target, layer=layer)
    for name, cls in peers.items():
        # Grad-CAM++: the peer's +1e-6 shifts alpha where |g| is small (~1e-4 relative here)
        rtol = 1e-4 if name == "gradcam_plus_plus" else 1e-5
        _close(ours[name], _peer(monkeypatch, cls, model, layer, x, target), rtol=rtol)


@pytest.mark.parametrize(("factory", "layer"), PEER_LAYERS)
def test_eigencam_agrees_with_pytorch_grad_cam_up_to_sign(monkeypatch, factory, layer) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = seeded(factory())
    x = _x()
    ours = cl.attribute(model, x, "eigencam", layer=layer).double()
    peer = _peer(monkeypatch, pgc.EigenCAM, model, layer, x, [0, 0, 0])  # it clips at 0
    for i in range(3):
        candidates = [ours[i].clamp_min(0), (-ours[i]).clamp_min(0)]
        errors = [float((c - peer[i]).abs().max()) for c in candidates]
        assert min(errors) <= 1e-5 * float(ours[i].abs().max()), errors


class LogSoftmaxHead(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).log_softmax(dim=1)


@pytest.mark.parametrize(("factory", "layer"), PEER_LAYERS)
def test_scorecam_agrees_with_pytorch_grad_cam_up_to_its_channel_softmax(
        monkeypatch, factory, layer: str) -> None:
    """The peer weights channel k by softmax_k(logit_c(masked_k)). On a model returning
    log-probabilities that is P_k / sum_j P_j, so its map is ours divided by a per-image
    constant; with its corner-aligned upsampling replaced by ours the maps must agree
    after dividing each by its sum."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", lambda size: nn.Upsample(
        size=size, mode="bilinear", align_corners=False))
    model = LogSoftmaxHead(seeded(factory()))
    x, target = _x(2), torch.tensor([1, 2])
    ours = cl.attribute(model, x, "scorecam", target=target, layer="model." + layer).double()
    peer = _peer(monkeypatch, pgc.ScoreCAM, model, "model." + layer, x, target)
    per_image = lambda m: m / m.sum(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    # the peer keeps softmax scores in float32
    _close(per_image(ours), per_image(peer), rtol=1e-5)


@pytest.mark.parametrize(("factory", "layer"), PEER_LAYERS)
def test_ablationcam_agrees_with_pytorch_grad_cam(monkeypatch, factory, layer: str) -> None:
    """On layers with exact zeros (after a ReLU) the peer zeroes channels as the paper does."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = _peer_model(factory)
    x, target = _x(), torch.tensor([0, 3, 4])
    ours = cl.attribute(model, x, "ablationcam", target=target, layer=layer)
    peer = _peer(monkeypatch, pgc.AblationCAM, model, layer, x, target, batch_size=5)
    _close(ours, peer, rtol=1e-4)  # the peer computes its weights in float32
