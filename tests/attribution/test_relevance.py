"""Layer-wise relevance propagation: paper references, Zennit, properties, refusals.

* Each rule on a single Linear and Conv2d layer against a float64 reference written from the
  papers' formulas with explicit loops over the layer's connections.
* Every rule and the two named composites against Zennit (test-only dependency) on TinyVGG,
  TinyResNet and torchvision's ResNet18.
* Properties: conservation, LRP-0 = input x gradient on ReLU nets, no NaN/inf, the model left
  bit-identical before/during/after, interception of functional code.
* Refusals: modules and functions without a rule raise UnsupportedModelError naming them.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from support import Snapshot
from tiny_models import FunctionalReLUNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens._hooks import evaluation_mode, gradients_enabled
from convlens.attribution.core import Problem
from convlens.attribution.relevance import register_rule
from convlens.attribution.relevance import rules as lrp_rules
from convlens.attribution.relevance.composites import RuleBook, named_composite
from convlens.attribution.relevance.propagation import Propagation
from convlens.errors import MethodError, UnsupportedModelError

LRP_METHODS = ["lrp_epsilon", "lrp_zplus", "lrp_alpha_beta", "lrp_gamma", "lrp_flat", "lrp"]
EPS = 1e-6  # the stabiliser of every rule but epsilon (rules.STABILISER)


def relevance64(model: nn.Module, x: torch.Tensor, method: str, target, **options):
    """Run a registered LRP method in float64 (``attribute`` returns float32)."""
    spec = cl.get_method(method)
    with evaluation_mode(model), gradients_enabled():
        problem = Problem(model, x.detach().clone(), target)
        return spec.compute(problem, **spec.bind(options))


def _input(n=2, size=16, seed=1, dtype=torch.float64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


# ------------------------------------------------------------------ paper references

def _stab(z: float, eps: float = EPS) -> float:
    return z + eps if z >= 0 else z - eps


def _connections(layer: nn.Module, x: torch.Tensor, j: int):
    """Explicit (input flat index, weight) pairs feeding output ``j`` of one sample."""
    if isinstance(layer, nn.Linear):
        return [(i, layer.weight[j, i].item()) for i in range(layer.in_features)], \
            (layer.bias[j].item() if layer.bias is not None else 0.0)
    c_in, h, w = x.shape
    c_out = layer.out_channels
    h_out = (h + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
    w_out = (w + 2 * layer.padding[1] - layer.kernel_size[1]) // layer.stride[1] + 1
    co, rest = divmod(j, h_out * w_out)
    oy, ox = divmod(rest, w_out)
    assert co < c_out
    per_group = c_in // layer.groups
    group = co // (c_out // layer.groups)
    pairs = []
    for ci in range(group * per_group, (group + 1) * per_group):
        for ky in range(layer.kernel_size[0]):
            for kx in range(layer.kernel_size[1]):
                iy = oy * layer.stride[0] - layer.padding[0] + ky
                ix = ox * layer.stride[1] - layer.padding[1] + kx
                if 0 <= iy < h and 0 <= ix < w:  # zero padding: no connection
                    weight = layer.weight[co, ci - group * per_group, ky, kx].item()
                    pairs.append(((ci * h + iy) * w + ix, weight))
    return pairs, (layer.bias[co].item() if layer.bias is not None else 0.0)


def reference(rule: str, layer: nn.Module, x: torch.Tensor, j: int, **p) -> torch.Tensor:
    """Relevance at the input of ``layer`` for one sample when output j holds R_j = z_j.

    Straight from the papers: epsilon and alpha-beta (Bach et al. 2015), z+ and z-box
    (Montavon et al. 2017), gamma (Montavon et al. 2019; for signed inputs: each
    contribution c_ij = x_i w_ij gets gamma * c_ij^+ added where z_j > 0, gamma * c_ij^-
    where z_j < 0, as in Andeol et al. 2021), flat (Lapuschkin et al. 2019).
    """
    pairs, b = _connections(layer, x, j)
    flat_x = x.reshape(-1)
    c = {i: flat_x[i].item() * w for i, w in pairs}
    z = sum(c.values()) + b
    out = torch.zeros_like(flat_x)
    if rule == "epsilon":
        for i in c:
            out[i] += c[i] / _stab(z, p["epsilon"]) * z
    elif rule in ("zplus", "alpha_beta"):
        alpha, beta = (1.0, 0.0) if rule == "zplus" else (p["alpha"], p["beta"])
        pos = sum(max(v, 0) for v in c.values())
        neg = sum(min(v, 0) for v in c.values())
        for i in c:
            out[i] += (alpha * max(c[i], 0) / _stab(pos) - beta * min(c[i], 0) / _stab(neg)) * z
    elif rule == "gamma":
        g = p["gamma"]
        if z != 0:
            part = (lambda v: max(v, 0)) if z > 0 else (lambda v: min(v, 0))
            num = {i: c[i] + g * part(c[i]) for i in c}
            den = sum(num.values()) + b + g * part(b)
            for i in c:
                out[i] += num[i] / _stab(den) * z
    elif rule == "flat":
        for i, _ in pairs:
            out[i] += 1.0 / _stab(float(len(pairs))) * z
    elif rule == "zbox":
        low, high = p["low"].reshape(-1), p["high"].reshape(-1)
        num = {i: flat_x[i].item() * w - low[i].item() * max(w, 0) - high[i].item() * min(w, 0)
               for i, w in pairs}
        den = sum(num.values())
        for i in num:
            out[i] += num[i] / _stab(den) * z
    return out.view_as(x)


LAYERS = {
    "linear": lambda: nn.Linear(12, 5),
    "conv": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    "depthwise": lambda: nn.Conv2d(3, 6, 3, stride=1, padding=1, groups=3),
    "grouped_nobias": lambda: nn.Conv2d(4, 6, 2, stride=1, padding=0, groups=2, bias=False),
}
RULE_CASES = {
    "epsilon": ("lrp_epsilon", {"epsilon": 0.1}),
    "zplus": ("lrp_zplus", {}),
    "alpha_beta": ("lrp_alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    "gamma": ("lrp_gamma", {"gamma": 0.25}),
    "flat": ("lrp_flat", {}),
    "zbox": ("lrp", {"composite": "epsilon_gamma_box"}),
}


@pytest.mark.parametrize("relu_first", [False, True], ids=["signed", "after_relu"])
@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule", list(RULE_CASES))
def test_rule_matches_paper_reference(rule: str, layer_name: str, relu_first: bool) -> None:
    torch.manual_seed(3)
    layer = LAYERS[layer_name]().double()
    in_shape = (12,) if layer_name == "linear" else (layer.in_channels, 5, 5)
    x = torch.randn(2, *in_shape, dtype=torch.float64)
    # The output neurons are the logits; a leading ReLU makes the layer's input
    # non-negative, which takes the engine's shortcut for z+, alpha-beta and gamma.
    model = nn.Sequential(*([nn.ReLU()] if relu_first else []), layer, nn.Flatten())
    targets = [1, 4] if layer_name == "linear" else [5, 17]
    method, options = RULE_CASES[rule]
    layer_input = x.relu() if relu_first else x
    if rule == "zbox":
        options = {**options, "low": -2.5, "high": torch.full(in_shape, 2.5).double()}
        if relu_first:
            options["low"] = 0.0
    ours = relevance64(model, x, method, targets, **options)
    for n, j in enumerate(targets):
        p = dict(options)
        if rule == "zbox":
            p["low"] = torch.full(in_shape, float(options["low"]), dtype=torch.float64)
            p["high"] = options["high"]
        expected = reference(rule, layer, layer_input[n], j, **p)
        torch.testing.assert_close(ours[n], expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- Zennit

#: The Zennit comparisons (tests/zennit_peer.py holds the peer's side of each case).
ZENNIT_CASES = ["lrp_epsilon", "lrp_zplus", "lrp_alpha_beta", "lrp_gamma", "lrp_flat",
                "epsilon_plus_flat", "epsilon_gamma_box"]


@pytest.fixture(scope="module")
def zennit_peer():
    """The peer's side; only the comparisons with Zennit skip when it is not installed."""
    pytest.importorskip("zennit")
    import zennit_peer

    return zennit_peer


def _zero_bn_eps(model: nn.Module) -> nn.Module:
    """Zennit's canonizer turns a merged BatchNorm into 'identity' but keeps its eps, so its
    forward is scaled by 1/sqrt(1 + eps) per BatchNorm (ours is the real forward, unchanged).
    With eps = 0 both compute the same network and must agree to rounding."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    return model


ZENNIT_MODELS = {
    "vgg": (lambda: seeded(TinyVGG()), lambda peer: ()),
    "resnet": (lambda: _zero_bn_eps(seeded(TinyResNet())),
               lambda peer: (peer.SequentialMergeBatchNorm(), peer.TinyBlockCanonizer())),
}


@pytest.mark.parametrize("case", ZENNIT_CASES)
@pytest.mark.parametrize("model_name", list(ZENNIT_MODELS))
def test_matches_zennit(zennit_peer, model_name: str, case: str) -> None:
    build, canonizers = ZENNIT_MODELS[model_name]
    model, x, targets = build(), _input(), [1, 3]
    options, conv, dense, first = zennit_peer.cases(x)[case]
    method = "lrp" if "composite" in options else case
    ours = relevance64(model, x, method, targets, **options)
    theirs = zennit_peer.relevance(model, x, targets, conv, dense, first,
                                   canonizers(zennit_peer))
    assert ours.abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10)


def _close_to_scale(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = 1e-4) -> None:
    """float32 agreement: every pixel within ``tolerance`` of the map's largest value."""
    scale = theirs.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance * scale)


@pytest.fixture(scope="module")
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    model = seeded(torchvision.models.resnet18(weights=None, num_classes=10), dtype=torch.float32)
    return _zero_bn_eps(model)


@pytest.mark.parametrize("case", ["epsilon_plus_flat", "lrp_gamma"])
def test_torchvision_resnet18_matches_zennit(zennit_peer, resnet18: nn.Module,
                                             case: str) -> None:
    """torchvision's in-place ``out += identity`` and shared in-place ReLU, against Zennit's
    ResNet canonizer (float32: float64 convolutions are ~100x slower on CPU)."""
    x = _input(1, size=32, dtype=torch.float32)
    options, conv, dense, first = zennit_peer.cases(x)[case]
    method = "lrp" if "composite" in options else case
    ours = relevance64(resnet18, x, method, [7], **options)
    theirs = zennit_peer.relevance(resnet18, x, [7], conv, dense, first,
                                   (zennit_peer.ResNetCanonizer(),))
    _close_to_scale(ours, theirs)


def test_torchvision_resnet50_runs_and_leaves_no_trace() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50(weights=None, num_classes=4).eval()
    snap = Snapshot(model)
    x = _input(1, size=32, dtype=torch.float32)
    r = cl.attribute(model, x, "lrp", target=2)
    snap.assert_unchanged()
    assert r.shape == x.shape and bool(torch.isfinite(r).all()) and r.abs().sum() > 0


# ------------------------------------------------------------------------ properties

def _bias_free(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):  # a pure scaling: no shift
                module.bias.zero_()
                module.running_mean.zero_()
    return model


@pytest.mark.parametrize("model_cls, method, options", [
    (TinyVGG, "lrp_epsilon", {"epsilon": 1e-12}),
    (TinyResNet, "lrp_epsilon", {"epsilon": 1e-12}),
    # The ratio rules conserve where every neuron carrying relevance has contributions of
    # both signs (alpha-beta) or a positive one (z+): true when a ReLU precedes each layer,
    # not in a residual branch that ends in BatchNorm (a neuron with only negative
    # contributions can get relevance through the sum, and z+ has nowhere to send it).
    (TinyVGG, "lrp_alpha_beta", {}),
    (TinyVGG, "lrp", {"composite": "epsilon_plus_flat", "epsilon": 1e-12}),
])
def test_conservation_on_bias_free_network(model_cls, method: str, options: dict) -> None:
    model = _bias_free(seeded(model_cls()))
    x = _input(3)
    with torch.no_grad():
        logits = model(x)
    targets = [0, 2, 4]
    total = relevance64(model, x, method, targets, **options).sum((1, 2, 3))
    torch.testing.assert_close(total, logits[torch.arange(3), targets], rtol=1e-6, atol=1e-9)


def test_zplus_conserves_relevance_on_positive_inputs_even_with_biases() -> None:
    # z+ ignores biases, so every layer passes on exactly what it receives.
    model = seeded(TinyVGG())
    x = _input(2).abs()
    with torch.no_grad():
        expected = model(x)[:, 1]
    total = relevance64(model, x, "lrp_zplus", 1).sum((1, 2, 3))
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-9)


def test_lrp0_equals_input_times_gradient_on_relu_networks() -> None:
    def input_x_gradient(model, x, targets):
        v = x.clone().requires_grad_()
        return x * torch.autograd.grad(model(v)[torch.arange(len(targets)), targets].sum(), v)[0]

    vgg, resnet, x = seeded(TinyVGG()), seeded(TinyResNet()), _input(2)
    # Pooling gets the epsilon rule too, so that nothing is stabilised: exact equality.
    exact = {nn.AvgPool2d: "epsilon", nn.AdaptiveAvgPool2d: "epsilon"}
    torch.testing.assert_close(
        relevance64(vgg, x, "lrp_epsilon", [0, 3], epsilon=0.0, rules=exact),
        input_x_gradient(vgg, x, [0, 3]), rtol=1e-10, atol=1e-13)
    # Residual sums keep their 1e-6 stabiliser: equal up to that.
    expected = input_x_gradient(resnet, x, [0, 3])
    torch.testing.assert_close(relevance64(resnet, x, "lrp_epsilon", [0, 3], epsilon=0.0),
                               expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_functional_code_is_intercepted_like_modules() -> None:
    """F.relu and .mean() in a forward get the same rules as nn.ReLU and average pooling."""
    functional = seeded(FunctionalReLUNet())
    modular = nn.Sequential(copy.deepcopy(functional.conv), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), copy.deepcopy(functional.fc))
    x = _input(2)
    for method in LRP_METHODS:
        torch.testing.assert_close(relevance64(functional, x, method, 1),
                                   relevance64(modular, x, method, 1), msg=method)


class _InPlaceFunctional(nn.Module):
    """In-place functional activation whose result is not used, then a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        x.relu_()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_inplace_functional_activation_is_intercepted() -> None:
    model = seeded(_InPlaceFunctional())
    modular = nn.Sequential(copy.deepcopy(model.conv), nn.ReLU(inplace=True),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), copy.deepcopy(model.fc))
    x = _input(2)
    for method in ("lrp_epsilon", "lrp_zplus", "lrp"):
        torch.testing.assert_close(relevance64(model, x, method, 2),
                                   relevance64(modular, x, method, 2), msg=method)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


class _CustomFunctionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = _StraightThrough.apply(self.conv(x))  # invisible to hooks and function modes
        return self.fc(x.relu().mean((2, 3)))


def test_relevance_through_an_uninterceptable_path_raises() -> None:
    model = seeded(_CustomFunctionNet())
    snap = Snapshot(model)
    with pytest.raises(UnsupportedModelError, match=r"output of 'conv' \(Conv2d\)"):
        cl.attribute(model, _input(1), "lrp_zplus", target=0)
    snap.assert_unchanged()


class _Adds(nn.Module):
    """Residual sums written four ways, and a scaled branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        out = self.a(x)
        out += x                          # in place, as torchvision writes it
        out = torch.add(self.relu(out), self.b(out), alpha=0.5)
        out.add_(x)                       # in place, result unused
        out = 0.5 * out + 1.0             # scaling, and a constant that absorbs relevance
        return self.fc(out.mean((2, 3)))


def test_residual_sums_split_relevance_by_contribution() -> None:
    model = _bias_free(seeded(_Adds()))
    x = _input(2)
    with torch.no_grad():
        logits = model(x)
    r = relevance64(model, x, "lrp_epsilon", 1, epsilon=1e-12)
    # only the constant 1.0 absorbs relevance: the input gets R * (z - 1) / z, summed
    # over the classifier's inputs; check against a hand-propagated total
    with torch.no_grad():
        out = model.a(x) + x
        out = out.relu() + 0.5 * model.b(out) + x
        pooled = (0.5 * out + 1.0).mean((2, 3))
        kept = (0.5 * out.mean((2, 3)) * model.fc.weight[1]).sum(1)
    torch.testing.assert_close(pooled @ model.fc.weight[1], logits[:, 1])
    # the sums' 1e-6 stabiliser shifts relevance where a sum is near 0: 1e-4 relative
    torch.testing.assert_close(r.sum((1, 2, 3)), kept, rtol=1e-4, atol=1e-9)
    leaky = relevance64(model, x, "lrp_epsilon", 1, epsilon=1e-12,
                        rules={"a": lrp_rules.epsilon(10.0)}).sum((1, 2, 3))
    assert not torch.allclose(leaky, kept, rtol=1e-2)  # the check sees a leaking branch


@pytest.mark.parametrize("method", LRP_METHODS)
def test_no_nan_or_inf_with_all_zero_activations(method: str) -> None:
    model = _bias_free(seeded(TinyResNet()))
    x = torch.zeros(2, 3, 16, 16, dtype=torch.float64)  # every activation is exactly 0
    r = relevance64(model, x, method, 1, **({"epsilon": 0.0} if "epsilon" in
                                             cl.get_method(method).options else {}))
    assert bool(torch.isfinite(r).all())
    dead = seeded(TinyVGG())
    with torch.no_grad():
        dead.features[2].weight.zero_()  # a layer whose output is all zero
    r = relevance64(dead, _input(), method, 1)
    assert bool(torch.isfinite(r).all())


def _raising_resnet() -> nn.Module:
    class Raising(TinyResNet):
        def forward(self, x):
            self.layer1(self.stem(x))  # BatchNorms run, and are merged, before the failure
            raise RuntimeError("boom")
    return seeded(Raising())


def test_model_bit_identical_before_during_and_after() -> None:
    """BatchNorm is merged on copies of the parameters, never in the model: the forward
    run during LRP computes exactly the model's own logits."""
    model = seeded(TinyResNet())
    x = _input()
    with torch.no_grad():
        before = model(x)
    snap = Snapshot(model)
    layout = named_composite("epsilon_plus_flat", epsilon=1e-6, gamma=0.25, alpha=2, beta=1,
                             low=None, high=None)
    with evaluation_mode(model), gradients_enabled():
        during = Propagation(model, RuleBook(layout)).run(model, x.clone().requires_grad_())
    assert torch.equal(during.detach(), before)
    snap.assert_unchanged()
    with torch.no_grad():
        assert torch.equal(model(x), before)

    raising = _raising_resnet()
    snap = Snapshot(raising)
    with pytest.raises(cl.ConvlensError, match="boom"):
        cl.attribute(raising, x, "lrp", target=0)
    snap.assert_unchanged()


# -------------------------------------------------------------------------- refusals

class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


def _with(*tail: nn.Module) -> nn.Module:
    return seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(4, 3), *tail))


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.head = _with()

    def forward(self, x):
        return self.head(x * torch.sigmoid(self.conv(x)))


@pytest.mark.parametrize("model, fragment", [
    (lambda: _with(nn.Softmax(dim=1)), r"softmax.*'5' \(Softmax\)"),
    (lambda: _with(nn.LayerNorm(3)), r"'5' \(LayerNorm\).*rules=\{'5': 'pass'\}"),
    (lambda: _with(_Scale()), r"'5' \(_Scale\).*register_rule\(_Scale"),
    (lambda: seeded(_Gated()), r"torch.sigmoid.*the model's forward \(_Gated\)"),
], ids=["softmax", "layernorm", "custom_parameters", "functional_gate"])
def test_unsupported_modules_are_refused_by_name(model, fragment: str) -> None:
    net = model()
    snap = Snapshot(net)
    with pytest.raises(UnsupportedModelError, match=fragment):
        cl.attribute(net, _input(1), "lrp", target=0)
    snap.assert_unchanged()


def test_rules_option_and_register_rule_make_a_module_explainable() -> None:
    net = _with(nn.LayerNorm(3))
    x = _input(1)
    by_name = cl.attribute(net, x, "lrp_epsilon", target=0, rules={"5": "pass"})
    register_rule(nn.LayerNorm, "pass")
    try:
        by_type = cl.attribute(net, x, "lrp_epsilon", target=0)
    finally:
        register_rule(nn.LayerNorm, None)
    torch.testing.assert_close(by_name, by_type)
    # 'pass' on the LayerNorm: the same relevance as the network without it, scaled by the
    # ratio of the logits (the initial relevance is the logit)
    plain = _with()
    plain.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        ratio = net(x)[0, 0] / net[4](net[3](net[2](net[1](net[0](x)))))[0, 0]
    expected = cl.attribute(plain, x, "lrp_epsilon", target=0) * ratio.float()
    torch.testing.assert_close(by_name, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(UnsupportedModelError):
        cl.attribute(net, x, "lrp_epsilon", target=0)


def test_bad_options_are_refused() -> None:
    model, x = seeded(TinyVGG()), _input(1)
    with pytest.raises(MethodError, match="alpha - beta must equal 1"):
        cl.attribute(model, x, "lrp_alpha_beta", alpha=2.0, beta=2.0)
    with pytest.raises(MethodError, match="unknown composite 'bogus'.*epsilon_plus_flat"):
        cl.attribute(model, x, "lrp", composite="bogus")
    with pytest.raises(MethodError, match="unknown rule 'nope'"):
        cl.attribute(model, x, "lrp", rules={"features.0": "nope"})
    with pytest.raises(MethodError, match="epsilon must be >= 0"):
        cl.attribute(model, x, "lrp_epsilon", epsilon=-1.0)


# ---------------------------------------------------------------- the bundled model

def test_efficientnet_lite_blocks_match_zennit(zennit_peer) -> None:
    """The bundled architecture's first blocks (SamePad2d padding modules, depthwise and
    grouped convolutions, ReLU6, BatchNorm, residual sums with and without expansion)
    against Zennit with a residual-sum canonizer for MBConvBlock."""
    from convlens.models.efficientnet_lite import efficientnet_lite0

    full = efficientnet_lite0(pretrained=False)
    assert full.blocks[2].use_residual and full.blocks[2].expand is not None
    model = nn.Sequential(full.stem, *full.blocks[:3], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(24, 5))
    model = _zero_bn_eps(seeded(model, dtype=torch.float32))
    x = _input(2, size=13, dtype=torch.float32)  # odd size: SAME padding is asymmetric
    for case in ("epsilon_plus_flat", "lrp_gamma", "lrp_epsilon"):
        options, conv, dense, first = zennit_peer.cases(x)[case]
        method = "lrp" if "composite" in options else case
        ours = relevance64(model, x, method, [3, 1], **options)
        theirs = zennit_peer.relevance(model, x, [3, 1], conv, dense, first,
                                       (zennit_peer.SequentialMergeBatchNorm(),
                                        zennit_peer.MBConvCanonizer()))
        _close_to_scale(ours, theirs)


@pytest.mark.slow
def test_bundled_model_pretrained_runs_every_method() -> None:
    clf = cl.load_model()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    snap = Snapshot(clf.module)
    results = cl.attribute(clf, x, LRP_METHODS, target=281)
    snap.assert_unchanged()
    # padding modules, in-place-free residual sums, merged BatchNorm: the LRP forward still
    # computes the model's own logits, bit for bit
    layout = named_composite("epsilon_plus_flat", epsilon=1e-6, gamma=0.25, alpha=2, beta=1,
                             low=None, high=None)
    with torch.no_grad():
        before = clf.module(x)
    with evaluation_mode(clf.module), gradients_enabled():
        during = Propagation(clf.module, RuleBook(layout)).run(clf.module, x.requires_grad_())
    assert torch.equal(during.detach(), before)
    for name, r in results.items():
        assert r.shape == x.shape and bool(torch.isfinite(r).all()) and r.abs().sum() > 0, name
