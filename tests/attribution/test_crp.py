"""Concept relevance propagation (CRP): conservation, closed forms, a paper reference, refusals.

* Conservation on held-out networks (torchvision ResNet-18 and MobileNetV2, seeded random
  weights, float64) for every LRP composite: at a cut layer (every path from the output to the
  input crosses it) the channel maps sum to the unconditioned map, which equals ``lrp``'s.
* Inside a residual branch relevance also takes the skip connection: ``bypass`` > 0.
* Gradient x activation: closed forms on two linear layers.
* A float64 reference written from the paper (the LRP backward pass with the relevance at the
  layer masked to one channel) with Zennit (0.5.1 here) computing the LRP part.
* The model is left untouched (also when the forward raises); each misuse is one clear error.
"""

from __future__ import annotations

import pytest
import torch
from support import Snapshot
from tiny_models import RaisingNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens.attribution.relevance import COMPOSITES
from convlens.errors import (
    ConvlensError,
    ConvlensWarning,
    LayerError,
    MethodError,
    UnsupportedModelError,
)

torchvision = pytest.importorskip("torchvision")

TARGETS = [1, 7]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """float64 convolutions on 16-pixel inputs are too small to share between threads: one
    thread runs this file several times faster (as under xdist, see conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _assert_relative(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Every value within ``rtol`` of the expected map's largest magnitude."""
    scale = expected.abs().max().item()
    assert scale > 0
    error = (got.to(torch.float64) - expected.to(torch.float64)).abs().max().item()
    assert error <= rtol * scale, f"max difference {error:.3g} > {rtol} x {scale:.3g}"


def _held_out(model: nn.Module) -> nn.Module:
    """torchvision's own seeded initialisation, with BatchNorm statistics that are not the
    identity (so that merging them into the convolutions matters), in float64."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(1 + torch.randn(c, generator=generator) * 0.1)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.double().eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _held_out(torchvision.models.resnet18(weights=None, num_classes=10))


@pytest.fixture(scope="module")
def mobilenet_v2() -> nn.Module:
    # width 0.1 (8 to 32 channels per block, 1280 at the end): float64 depthwise
    # convolutions run one group at a time on CPU (torch's slow path), so the full width
    # costs tens of seconds per test here; the structure (inverted residuals, depthwise
    # convolutions, ReLU6, BatchNorm) is the same.
    torch.manual_seed(0)
    return _held_out(torchvision.models.mobilenet_v2(weights=None, num_classes=10,
                                                     width_mult=0.1))


#: Cut layers: every path from the logits to the pixels crosses their output.
CUTS = {"resnet18": ["layer1", "layer2", "layer3", "layer4"],
        "mobilenet_v2": ["features.3", "features.7", "features.14", "features.18"]}


# ------------------------------------------------------------------------- conservation

@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("network", list(CUTS))
def test_channel_maps_sum_to_the_lrp_map_at_cut_layers(request, network: str,
                                                       composite: str) -> None:
    """At every cut layer and for every composite: the map through all channels (one backward
    pass from the layer; by linearity the sum of the per-channel maps, summed explicitly in
    the next test) equals the unconditioned map (``bypass`` 0), and that map equals
    ``cl.attribute(..., "lrp")`` with the same composite (float32) within 1e-5 relative."""
    model, x = request.getfixturevalue(network), _input()
    lrp = cl.attribute(model, x, "lrp", target=TARGETS, composite=composite).sum(1)
    assert lrp.dtype == torch.float32
    for layer in CUTS[network]:
        result = cl.concept_maps(model, x, layer, top=2, target=TARGETS, composite=composite)
        assert result.rule == f"lrp:{composite}"
        assert result.maps.shape == (2, 2, 16, 16) and result.maps.dtype == torch.float64
        assert result.bypass.max().item() < 1e-12, (layer, result.bypass)
        _assert_relative(result.heatmap, lrp)
        assert result.maps.abs().sum() > 0


@pytest.mark.parametrize("network, layer", [("resnet18", "layer1"), ("resnet18", "layer2"),
                                            ("mobilenet_v2", "features.3"),
                                            ("mobilenet_v2", "features.14")])
def test_all_channel_maps_sum_to_the_unconditioned_map(request, network: str,
                                                       layer: str) -> None:
    """The CRP conservation property itself: one map per channel (64 and 128 in resnet18,
    8 and 32 in mobilenet_v2), summed."""
    model, x = request.getfixturevalue(network), _input()
    count = cl.concept_relevance(model, x, layer, target=TARGETS).shape[1]
    result = cl.concept_maps(model, x, layer, channels=list(range(count)), target=TARGETS)
    assert result.maps.shape[1] == count
    _assert_relative(result.maps.sum(1), result.heatmap, rtol=1e-10)


@pytest.mark.parametrize("network, layer", [("resnet18", "layer1.0.conv1"),
                                            ("mobilenet_v2", "features.3.conv.0")])
def test_relevance_bypasses_a_layer_inside_a_residual_branch(request, network: str,
                                                             layer: str) -> None:
    """Inside a residual block the skip connection carries part of the relevance around the
    layer, so the channels do not explain the whole map and ``bypass`` says how much is
    missing (about 0.6 of resnet18's layer1.0 with these weights)."""
    model, x = request.getfixturevalue(network), _input()
    result = cl.concept_maps(model, x, layer, channels=[0], target=TARGETS)
    assert (result.bypass > 0.05).all() and (result.bypass < 1).all(), result.bypass


def test_concept_relevance_equals_the_maps_relevances(resnet18: nn.Module,
                                                      mobilenet_v2: nn.Module) -> None:
    x = _input()
    for model, layer in ((resnet18, "layer3"), (mobilenet_v2, "features.7")):
        for rule in ("lrp", "gradient"):
            maps = cl.concept_maps(model, x, layer, channels=[0], target=TARGETS, rule=rule)
            cheap = cl.concept_relevance(model, x, layer, target=TARGETS, rule=rule)
            assert cheap.shape == maps.relevances.shape
            torch.testing.assert_close(cheap, maps.relevances, rtol=1e-10, atol=1e-12)
            spatial = cl.concept_relevance(model, x, layer, target=TARGETS, rule=rule,
                                           spatial=True)
            torch.testing.assert_close(spatial.flatten(2).sum(2), cheap)


def test_top_channels_are_each_samples_most_relevant_in_order(resnet18: nn.Module) -> None:
    x = _input()
    result = cl.concept_maps(resnet18, x, "layer2", top=3, target=TARGETS)
    expected = result.relevances.argsort(dim=1, descending=True)[:, :3]
    assert torch.equal(result.channels, expected)
    assert not torch.equal(result.channels[0], result.channels[1])  # chosen per sample
    gathered = result.relevances.gather(1, result.channels)
    assert (gathered[:, :-1] >= gathered[:, 1:]).all()
    again = cl.concept_maps(resnet18, x[:1], "layer2", channels=result.channels[0].tolist(),
                            target=TARGETS[:1])
    torch.testing.assert_close(again.maps[0], result.maps[0])


def test_attribute_crp_returns_one_map_per_channel(resnet18: nn.Module) -> None:
    x = _input()
    maps = cl.attribute(resnet18, x, "crp", layer="layer2", channels=[5, 2, 9],
                        target=TARGETS, composite="epsilon_gamma_box")
    assert maps.shape == (2, 3, 16, 16)
    expected = cl.concept_maps(resnet18, x, "layer2", channels=[5, 2, 9], target=TARGETS,
                               composite="epsilon_gamma_box").maps
    _assert_relative(maps, expected)


# ------------------------------------------------------------ gradient x activation

class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(12, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.flatten(x)))


def test_gradient_x_activation_closed_form() -> None:
    """Channel ``c``'s map is ``x * W1[c] * W2[t, c]`` (colour summed) and its relevance
    ``a_c * g_c`` with ``a = W1 x + b1``, ``g = W2[t]``; over all channels the maps sum to
    input x gradient."""
    model = seeded(TwoLinear())
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets = [2, 0]
    result = cl.concept_maps(model, x, "hidden", channels=list(range(5)), target=targets,
                             rule="gradient")
    assert result.rule == "gradient_x_activation"
    w1, b1, w2 = model.hidden.weight, model.hidden.bias, model.out.weight
    flat = x.flatten(1)
    for n, t in enumerate(targets):
        expected = (flat[n] * w1 * w2[t].unsqueeze(1)).view(5, 3, 2, 2).sum(1)
        torch.testing.assert_close(result.maps[n], expected.detach())
        relevance = (w1 @ flat[n] + b1) * w2[t]
        torch.testing.assert_close(result.relevances[n], relevance.detach())
    ixg = cl.attribute(model, x, "input_x_gradient", target=targets).sum(1)
    _assert_relative(result.maps.sum(1), ixg)
    _assert_relative(result.heatmap, ixg)
    assert result.bypass.max().item() < 1e-12


def test_auto_falls_back_to_gradient_x_activation_and_says_so() -> None:
    """A module LRP has no rule for (LayerNorm on the logits): ``rule="auto"`` warns, uses
    gradient x activation and says so in ``rule``; ``rule="lrp"`` refuses."""
    model = seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
                                 nn.LayerNorm(3)))
    x = _input(size=8)
    with pytest.warns(ConvlensWarning, match="gradient x activation"):
        auto = cl.concept_maps(model, x, "1", channels=[0, 2], target=[0, 1])
    assert auto.rule == "gradient_x_activation"
    gradient = cl.concept_maps(model, x, "1", channels=[0, 2], target=[0, 1], rule="gradient")
    torch.testing.assert_close(auto.maps, gradient.maps)
    with pytest.raises(UnsupportedModelError, match="LayerNorm"):
        cl.concept_maps(model, x, "1", channels=[0], target=[0, 1], rule="lrp")


# ---------------------------------------------------------- reference from the paper

@pytest.fixture(scope="module")
def zennit_peer():
    pytest.importorskip("zennit")
    import zennit_peer

    return zennit_peer


def _masked_reference(peer, model: nn.Module, x: torch.Tensor, layer: nn.Module,
                      channel: int, targets: list[int], canonizers) -> torch.Tensor:
    """CRP from the paper: the LRP backward pass (Zennit's ZPlus/Epsilon/Flat rules, as in
    ``epsilon_plus_flat``) with the relevance at ``layer``'s output set to zero outside
    ``channel``, masked by a tensor hook on that output."""
    from zennit.rules import Epsilon, Flat, ZPlus

    def mask(_module, _inputs, output):
        keep = torch.zeros_like(output)
        keep[:, channel] = 1
        output.register_hook(lambda grad: grad * keep)

    handle = layer.register_forward_hook(mask)
    try:
        return peer.relevance(model, x, targets, ZPlus(zero_params="bias"), Epsilon(1e-6),
                              Flat(), canonizers).sum(1)
    finally:
        handle.remove()


def _zero_bn_eps(model: nn.Module) -> nn.Module:
    for module in model.modules():  # see test_relevance.py: Zennit's merge keeps BN's eps
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    return model


@pytest.mark.parametrize("network", ["vgg", "resnet"])
def test_matches_the_masked_lrp_reference(zennit_peer, network: str) -> None:
    if network == "vgg":
        model, layers, canonizers = seeded(TinyVGG(inplace=False)), ["features.2",
                                                                      "features.7"], ()
    else:
        model = _zero_bn_eps(seeded(TinyResNet()))
        layers = ["layer1", "layer2"]
        canonizers = (zennit_peer.SequentialMergeBatchNorm(), zennit_peer.TinyBlockCanonizer())
    x, targets = _input(), [1, 3]
    for layer in layers:
        relevance = cl.concept_relevance(model, x, layer, target=targets)
        channels = relevance.abs().sum(0).topk(3).indices.tolist()  # not dead ones
        ours = cl.concept_maps(model, x, layer, channels=channels, target=targets)
        for k, channel in enumerate(channels):
            theirs = _masked_reference(zennit_peer, model, x, model.get_submodule(layer),
                                       channel, targets, canonizers)
            assert theirs.abs().max() > 0
            torch.testing.assert_close(ours.maps[:, k], theirs, rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------------- hygiene, errors

def test_model_untouched_and_hooks_removed_on_an_exception(resnet18: nn.Module) -> None:
    before = Snapshot(resnet18)
    x = _input(n=1, size=16)
    cl.concept_maps(resnet18, x, "layer3", top=2, target=[1])
    cl.concept_relevance(resnet18, x, "layer3", target=[1])
    cl.concept_maps(resnet18, x, "layer3", top=2, target=[1], rule="gradient")
    before.assert_unchanged()

    raising = seeded(RaisingNet())
    snapshot = Snapshot(raising)
    for call in (cl.concept_maps, cl.concept_relevance):
        for rule in ("lrp", "gradient"):
            with pytest.raises(ConvlensError, match="boom"):
                call(raising, _input(n=1, size=8), "conv", target=[0], rule=rule)
    snapshot.assert_unchanged()


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.unused = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("rule", ["lrp", "gradient"])
@pytest.mark.parametrize("case, kind, words", [
    ("channel", MethodError, ["channel 3 does not exist", "3 channels (0..2)"]),
    ("layers", LayerError, ["one layer"]),
    ("twice", LayerError, ["runs more than once", "choose a layer that runs once"]),
    ("never", LayerError, ["did not run", "convlens layers"]),
])
def test_each_misuse_is_one_clear_error(rule: str, case: str, kind: type, words: list[str]
                                        ) -> None:
    model, x = seeded(Twice()), _input(n=1, size=8)
    snapshot = Snapshot(model)
    layer = {"channel": "conv", "layers": ["conv", "fc"], "twice": "conv",
             "never": "unused"}[case]
    if case == "channel":
        model = seeded(TinyVGG(width=3)).eval()
        layer, snapshot = "features.0", Snapshot(model)
    calls = [lambda: cl.concept_maps(model, x, layer, channels=[0, 3], target=[0], rule=rule)]
    if case != "channel":
        calls.append(lambda: cl.concept_relevance(model, x, layer, target=[0], rule=rule))
    for call in calls:
        with pytest.raises(kind) as error:
            call()
        message = str(error.value)
        assert isinstance(error.value, ConvlensError) and "\n" not in message
        for word in words:
            assert word in message, message
    snapshot.assert_unchanged()
