"""Targets beyond a class index: score functions, model outputs, dtypes, channel checks."""

from __future__ import annotations

import pytest
import torch
from support import FAST_OPTIONS
from tiny_models import LinearNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens.errors import ConvlensError, InputShapeError, TargetError, UnsupportedModelError


def _x(n: int = 2, size: int = 16, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


# ---- score functions: one registry-driven check, then closed forms ------------------------

def _third(out: torch.Tensor) -> torch.Tensor:
    return out[:, 2]


@pytest.mark.parametrize("method", [m.name for m in cl.methods()])
def test_every_method_explains_a_score_function_or_refuses_it(method: str, snapshot) -> None:
    """A score function selecting logit 2 must give exactly what target=2 gives."""
    model = seeded(TinyVGG())
    x = _x()
    options = FAST_OPTIONS.get(method, {})
    spec = cl.get_method(method)
    watch = snapshot(model)
    if spec.needs_class_index:
        with pytest.raises(TargetError, match=f"{method} needs a class index.*"
                                              f"{spec.needs_class_index[:20]}"):
            cl.attribute(model, x, method, target=_third, **options)
        watch.assert_unchanged()
        return
    by_function = cl.attribute(model, x, method, target=_third, **options)
    by_index = cl.attribute(model, x, method, target=2, **options)
    watch.assert_unchanged()
    torch.testing.assert_close(by_function, by_index)


def test_multi_label_sigmoid_score_has_the_closed_form_gradient() -> None:
    model = seeded(LinearNet(classes=4))
    x = _x(3, size=4)
    got = cl.attribute(model, x, "saliency", target=lambda out: out[:, 1].sigmoid())
    z = model(x)[:, 1].detach()
    slope = (z.sigmoid() * (1 - z.sigmoid())).view(-1, 1, 1, 1)
    expected = (slope * model.fc.weight[1].detach().view(1, 3, 4, 4)).abs()  # saliency: |grad|
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


class Regressor(nn.Module):
    """y = w . vec(x) + b, returned as shape (N,): a regression model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))[:, 0]


def test_regression_output_is_its_own_score() -> None:
    model = seeded(Regressor())
    x = _x(2, size=4)
    got = cl.attribute(model, x, "input_x_gradient", target=lambda out: out)
    expected = x * model.fc.weight.detach().view(1, 3, 4, 4)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(TargetError, match="shape"):  # a class index needs (N, classes)
        cl.attribute(model, x, "saliency", target=0)


class Segmenter(nn.Module):
    """A 1x1 convolution to 3 class logits per pixel: (N, 3, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_segmentation_mask_score_matches_autograd_and_cams_run() -> None:
    model = seeded(Segmenter())
    x = _x(2, size=8)
    mask = torch.zeros(8, 8, dtype=torch.float64)
    mask[2:5, 3:7] = 1

    def region(out: torch.Tensor) -> torch.Tensor:
        return (out[:, 1] * mask).sum(dim=(1, 2))

    got = cl.attribute(model, x, "saliency", target=region)
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(region(model(inputs)).sum(), inputs)
    torch.testing.assert_close(got.double(), grad.abs(), rtol=1e-5, atol=1e-7)
    cam = cl.attribute(model, x, "gradcam", target=region, layer="body")
    assert cam.shape == (2, 1, 8, 8) and torch.isfinite(cam).all()


@pytest.mark.parametrize("function,message", [
    (lambda out: out, "one score per sample"),            # (N, classes), not (N,)
    (lambda out: out.argmax(dim=1), "float tensor"),
    (lambda out: 3.0, "float tensor"),
    (lambda out: out[:, 99], "target function failed"),
])
def test_bad_score_functions_are_refused_clearly(function, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        cl.attribute(seeded(TinyVGG()), _x(), "saliency", target=function)


def test_unknown_class_names_suggest_close_ones() -> None:
    clf = cl.Classifier(seeded(TinyVGG(classes=3), dtype=torch.float32),
                        labels=["tabby cat", "tiger cat", "goldfish"], input_size=16, device="cpu")
    with pytest.raises(TargetError, match=r"did you mean 'tabby cat'"):
        cl.attribute(clf, _x().float(), "saliency", target="taby cat")
    with pytest.raises(TargetError, match="goldfish"):
        cl.attribute(clf, _x().float(), "saliency", target="Goldfsh")


# ---- models returning tuples or dicts ------------------------------------------------------

class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyVGG()

    def forward(self, x: torch.Tensor):
        return self.net(x), {"input_mean": x.mean()}


class DictNet(TupleNet):
    def forward(self, x: torch.Tensor):
        return {"aux": torch.zeros(x.shape[0], 2, dtype=x.dtype), "logits": self.net(x)}


@pytest.mark.parametrize("method", ["gradcam", "saliency", "lrp_epsilon", "occlusion"])
def test_tuple_and_dict_outputs_explain_the_chosen_tensor(method: str) -> None:
    tuple_net, dict_net = seeded(TupleNet()), seeded(DictNet())
    dict_net.load_state_dict(tuple_net.state_dict())
    x = _x()
    options = FAST_OPTIONS.get(method, {})
    expected = cl.attribute(tuple_net.net, x, method, target=1, layer="features", **options) \
        if method == "gradcam" else cl.attribute(tuple_net.net, x, method, target=1, **options)
    layer = {"layer": "net.features"} if method == "gradcam" else {}
    torch.testing.assert_close(cl.attribute(tuple_net, x, method, target=1, **layer, **options),
                               expected)  # default: the first tensor
    torch.testing.assert_close(
        cl.attribute(dict_net, x, method, target=1, output="logits", **layer, **options), expected)
    clf = cl.Classifier(dict_net, output="logits", input_size=16, device="cpu")
    torch.testing.assert_close(cl.attribute(clf, x, method, target=1, **layer, **options),
                               expected)


def test_output_selection_errors_name_what_there_is() -> None:
    x = _x()
    with pytest.raises(UnsupportedModelError, match=r"keys are \['aux', 'logits'\]"):
        cl.attribute(seeded(DictNet()), x, "saliency", output="scores")
    with pytest.raises(UnsupportedModelError, match="index 0..1"):
        cl.attribute(seeded(TupleNet()), x, "saliency", output=5)
    with pytest.raises(UnsupportedModelError, match="not a tensor"):
        cl.attribute(seeded(TupleNet()), x, "saliency", output=1)


def test_classifier_predicts_through_the_chosen_output() -> None:
    clf = cl.Classifier(seeded(DictNet(), dtype=torch.float32), output="logits", input_size=16,
                        device="cpu")
    x = _x().float()
    torch.testing.assert_close(clf.logits(x), clf.module.net(x))
    assert len(clf.predict(x, top=2)[0]) == 2


# ---- dtypes and channels --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_inputs_are_converted_to_the_parameters_dtype(dtype: torch.dtype, method: str) -> None:
    model = seeded(TinyVGG(), dtype=torch.float32)
    x = _x().float()
    if dtype == torch.float16:
        x = x.half().float()  # representable in both
    expected = cl.attribute(model, x, method, target=1)
    got = cl.attribute(model, x.to(dtype), method, target=1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", [m.name for m in cl.methods()])
def test_a_one_channel_input_to_a_colour_model_is_one_clear_error(method: str) -> None:
    model = seeded(TinyVGG(), dtype=torch.float32)
    with pytest.raises(InputShapeError, match=r"1-channel .*x.repeat\(1, 3, 1, 1\)") as info:
        cl.attribute(model, torch.rand(1, 1, 16, 16), method, **FAST_OPTIONS.get(method, {}))
    assert isinstance(info.value, ConvlensError)


# ---- the one adapter --------------------------------------------------------------------------

def test_as_classifier_wraps_modules_without_touching_them(snapshot) -> None:
    from convlens.models.classifier import as_classifier

    clf = cl.Classifier(seeded(TinyVGG(), dtype=torch.float32), input_size=16, device="cpu")
    assert as_classifier(clf) is clf
    module = seeded(TinyVGG())
    watch = snapshot(module)
    wrapped = as_classifier(module)
    assert wrapped.module is module and wrapped.device == torch.device("cpu")
    assert wrapped.sample_shape == (3, 224, 224)
    watch.assert_unchanged()
    with pytest.raises(UnsupportedModelError, match="nn.Module or a convlens.Classifier"):
        as_classifier("resnet18")


def test_the_default_layer_is_derived_once_per_input_shape(monkeypatch) -> None:
    import convlens.models.classifier as classifier_module

    calls = []
    original = classifier_module.default_layer_name

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "default_layer_name", counting)
    clf = cl.Classifier(seeded(TinyVGG(), dtype=torch.float32), input_size=16, device="cpu")
    x = _x().float()
    for _ in range(3):
        cl.attribute(clf, x, ["gradcam", "layercam"])
    assert clf.default_layer() == "features"  # input_size 16: the same shape, cached
    assert len(calls) == 1
    cl.attribute(clf, _x(size=24).float(), "gradcam")
    assert len(calls) == 2
