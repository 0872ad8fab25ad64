"""The first methods against their definitions, and the attribute() contract."""

from __future__ import annotations

import pytest
import torch
from tiny_models import LinearNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens.errors import InputShapeError, LayerError, MethodError, TargetError


def _x(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


# ---- closed forms on a linear model -------------------------------------------------------

@pytest.fixture
def linear() -> LinearNet:
    return seeded(LinearNet((3, 4, 4), classes=3))


def test_saliency_of_a_linear_model_is_the_absolute_weight_row(linear: LinearNet) -> None:
    x = _x(2, 4)
    target = torch.tensor([0, 2])
    got = cl.attribute(linear, x, "saliency", target=target)
    expected = linear.fc.weight[target].abs().view(2, 3, 4, 4)
    torch.testing.assert_close(got, expected.float())


def test_input_x_gradient_of_a_linear_model(linear: LinearNet) -> None:
    x = _x(2, 4)
    got = cl.attribute(linear, x, "input_x_gradient", target=1)
    expected = x * linear.fc.weight[1].view(1, 3, 4, 4)
    torch.testing.assert_close(got, expected.float())


@pytest.mark.parametrize("rule", ["gauss_legendre", "riemann_middle", "riemann_trapezoid"])
def test_integrated_gradients_of_a_linear_model_is_exact(linear: LinearNet, rule: str) -> None:
    x, x0 = _x(2, 4), _x(1, 4, seed=5)
    got = cl.attribute(linear, x, "integrated_gradients", target=2, baseline=x0, steps=3,
                       rule=rule)
    expected = (x - x0) * linear.fc.weight[2].view(1, 3, 4, 4)
    torch.testing.assert_close(got, expected.float())


# ---- integrated gradients: completeness and batching ---------------------------------------

class SmoothNet(nn.Module):
    """Softplus activations: the path integral converges fast, completeness is tight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.Softplus()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_integrated_gradients_completeness_on_a_smooth_model() -> None:
    model = seeded(SmoothNet())
    x = _x(3, 8)
    ig = cl.attribute(model, x, "integrated_gradients", target=[0, 1, 3], steps=16)
    with torch.no_grad():
        logits, base = model(x), model(torch.zeros_like(x))
    delta = logits[[0, 1, 2], [0, 1, 3]] - base[[0, 1, 2], [0, 1, 3]]
    torch.testing.assert_close(ig.double().sum(dim=(1, 2, 3)), delta, atol=1e-5, rtol=1e-5)


def test_integrated_gradients_completeness_on_a_relu_resnet_converges() -> None:
    model = seeded(TinyResNet())
    x = _x(2, 16)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x)))[:, 1]
    errors = []
    for steps in (8, 256):
        ig = cl.attribute(model, x, "integrated_gradients", target=1, steps=steps)
        errors.append((ig.double().sum(dim=(1, 2, 3)) - delta).abs().max().item())
    assert errors[1] < 0.02 * delta.abs().max().item()
    assert errors[1] < errors[0]


def test_integrated_gradients_is_independent_of_the_internal_batch_size() -> None:
    model = seeded(TinyVGG(inplace=True))
    x = _x(3, 16)
    a = cl.attribute(model, x, "integrated_gradients", steps=7, batch_size=2)
    b = cl.attribute(model, x, "integrated_gradients", steps=7, batch_size=100)
    torch.testing.assert_close(a, b)


def test_integrated_gradients_reference_from_the_definition() -> None:
    model = seeded(TinyResNet())
    x, steps = _x(2, 16), 5
    got = cl.attribute(model, x, "integrated_gradients", target=0, steps=steps,
                       rule="riemann_middle")
    total = torch.zeros_like(x)
    for k in range(steps):
        point = ((k + 0.5) / steps * x).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point)[:, 0].sum(), point)
        total += grad / steps
    torch.testing.assert_close(got, (x * total).float())


# ---- CAMs against a hook-free reference -----------------------------------------------------

def _vgg_activations_and_gradients(model: TinyVGG, x: torch.Tensor, target: torch.Tensor):
    activations = model.features(x).detach().requires_grad_(True)
    logits = model.classifier(model.pool(activations))
    (gradients,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), activations)
    return activations.detach(), gradients


def test_gradcam_matches_its_definition() -> None:
    model = seeded(TinyVGG())
    x = _x(3)
    target = torch.tensor([0, 3, 4])
    got = cl.attribute(model, x, "gradcam", target=target, layer="features")
    a, g = _vgg_activations_and_gradients(model, x, target)
    expected = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    assert got.shape == (3, 1, 4, 4)
    torch.testing.assert_close(got, expected.float())


def test_layercam_matches_its_definition() -> None:
    model = seeded(TinyVGG())
    x = _x(3)
    target = torch.tensor([1, 1, 2])
    got = cl.attribute(model, x, "layercam", target=target, layer=model.features)
    a, g = _vgg_activations_and_gradients(model, x, target)
    expected = torch.relu((torch.relu(g) * a).sum(1, keepdim=True))
    torch.testing.assert_close(got, expected.float())


def test_gradcam_without_relu_keeps_negative_evidence() -> None:
    model = seeded(TinyVGG())
    x = _x(3)
    signed = cl.attribute(model, x, "gradcam", layer="features", relu=False)
    clipped = cl.attribute(model, x, "gradcam", layer="features")
    torch.testing.assert_close(signed.clamp_min(0), clipped)


def test_cams_requested_together_share_one_forward_pass() -> None:
    model = seeded(TinyResNet())
    x = _x(2)
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        together = cl.attribute(model, x, ["gradcam", "layercam"], target=2, layer="layer1")
    finally:
        handle.remove()
    assert len(calls) == 1
    for name in ("gradcam", "layercam"):
        torch.testing.assert_close(together[name],
                                   cl.attribute(model, x, name, target=2, layer="layer1"))


def test_cam_on_a_layer_followed_by_an_inplace_relu_sees_the_pre_relu_activation() -> None:
    model = seeded(TinyVGG(inplace=True))
    x = _x(2)
    got = cl.attribute(model, x, "gradcam", target=0, layer="features.0", relu=False)
    conv_out = model.features[0](x).detach().requires_grad_(True)
    rest = nn.Sequential(*list(model.features)[1:])
    logits = model.classifier(model.pool(rest(conv_out.clone())))
    (g,) = torch.autograd.grad(logits[:, 0].sum(), conv_out)
    expected = (g.mean(dim=(2, 3), keepdim=True) * conv_out).sum(1, keepdim=True)
    torch.testing.assert_close(got, expected.detach().float())


def test_multi_layer_cam_averages_upsampled_maps() -> None:
    model = seeded(TinyVGG())
    x = _x(2)
    a = cl.attribute(model, x, "gradcam", target=0, layer="features.4")
    b = cl.attribute(model, x, "gradcam", target=0, layer="features.7")
    both = cl.attribute(model, x, "gradcam", target=0, layer=["features.4", "features.7"])
    b_up = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear",
                                           align_corners=False)
    torch.testing.assert_close(both, (a + b_up) / 2)


def test_cam_works_with_frozen_parameters() -> None:
    model = seeded(TinyVGG())
    model.requires_grad_(False)
    x = _x(1)
    got = cl.attribute(model, x, "gradcam", target=0, layer="features")
    assert got.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


# ---- targets ---------------------------------------------------------------------------------

def test_default_target_is_each_samples_prediction() -> None:
    model = seeded(TinyVGG())
    x = _x(4)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    torch.testing.assert_close(cl.attribute(model, x, "saliency"),
                               cl.attribute(model, x, "saliency", target=predicted))
    torch.testing.assert_close(cl.attribute(model, x, "integrated_gradients", steps=3),
                               cl.attribute(model, x, "integrated_gradients", steps=3,
                                            target=predicted.tolist()))


def test_class_names_are_targets_when_labels_are_known() -> None:
    module = seeded(TinyVGG(classes=3), dtype=torch.float32)
    clf = cl.Classifier(module, labels=["cat", "dog", "tabby cat"], input_size=16, device="cpu")
    x = _x(2).float()
    torch.testing.assert_close(cl.attribute(clf, x, "saliency", target="dog"),
                               cl.attribute(module, x, "saliency", target=1))
    # The shared did_you_mean wording: close spellings, and names containing a 3+ letter word.
    with pytest.raises(TargetError, match=r"did you mean 'cat'\?"):
        cl.attribute(clf, x, "saliency", target="ca")
    with pytest.raises(TargetError, match=r"did you mean 'tabby cat'\?"):
        cl.attribute(clf, x, "saliency", target="tabby")
    with pytest.raises(TargetError, match="no labels"):
        cl.attribute(module, x, "saliency", target="dog")


@pytest.mark.parametrize("target,message", [
    (5, "out of range"), (-1, "out of range"), ([0, 1, 2], "3 targets for a batch of 2"),
    (torch.tensor([0.5, 1.0]), "integer class indices"), (1.5, "an int"),
])
def test_bad_targets_are_refused_clearly(target, message) -> None:
    with pytest.raises(TargetError, match=message):
        cl.attribute(seeded(TinyVGG()), _x(2), "saliency", target=target)


# ---- layers and inputs ----------------------------------------------------------------------

def test_default_layer_is_the_last_spatial_layer() -> None:
    model = seeded(TinyVGG())
    x = _x(1)
    torch.testing.assert_close(cl.attribute(model, x, "gradcam"),
                               cl.attribute(model, x, "gradcam", layer="features"))
    resnet = seeded(TinyResNet())
    torch.testing.assert_close(cl.attribute(resnet, x, "gradcam"),
                               cl.attribute(resnet, x, "gradcam", layer="layer2"))


def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(LayerError, match=r"unknown layer 'feature'.*did you mean: features"):
        cl.attribute(seeded(TinyVGG()), _x(1), "gradcam", layer="feature")
    with pytest.raises(LayerError, match="not part of the model"):
        cl.attribute(seeded(TinyVGG()), _x(1), "gradcam", layer=nn.Conv2d(3, 3, 1))


def test_a_layer_without_spatial_output_is_refused() -> None:
    with pytest.raises(LayerError, match=r"\(N, C, H, W\) feature map"):
        cl.attribute(seeded(TinyVGG()), _x(1), "gradcam", layer="classifier")


@pytest.mark.parametrize("x,message", [
    ([1, 2, 3], "torch.Tensor"), (torch.zeros(3, 16, 16), "unsqueeze"),
    (torch.zeros(0, 3, 16, 16), "empty"), (torch.zeros(1, 3, 16, 16, dtype=torch.uint8),
                                          "floating point"),
    (torch.full((1, 3, 16, 16), float("nan")), "NaN"), (torch.zeros(1, 1, 16, 16), "model failed"),
])
def test_bad_inputs_are_refused_clearly(x, message) -> None:
    with pytest.raises(InputShapeError, match=message):
        cl.attribute(seeded(TinyVGG(), dtype=torch.float32), x, "saliency")


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(MethodError, match="unknown method 'gradcamm'.*gradcam"):
        cl.attribute(seeded(TinyVGG()), _x(1), "gradcamm")


def test_repeated_calls_do_not_touch_the_callers_input() -> None:
    model = seeded(TinyVGG())
    x = _x(2).requires_grad_(True)
    first = cl.attribute(model, x, "saliency")
    second = cl.attribute(model, x, "saliency")
    torch.testing.assert_close(first, second)
    assert x.grad is None and x.requires_grad


def test_layers_lists_names_types_and_shapes() -> None:
    infos = {info.name: info for info in cl.layers(seeded(TinyVGG(), dtype=torch.float32))}
    assert infos["features.0"].type == "Conv2d"
    assert infos["features.0"].output_shape == (8, 224, 224)
    assert infos["classifier.1"].output_shape == (5,)
    assert infos["features.0"].parameters == 8 * 3 * 9 + 8
