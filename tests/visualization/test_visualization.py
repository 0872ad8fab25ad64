"""Feature visualization: objectives against their definitions, the optimisation loop's
contract (batched = separate, preprocessing, early stop, hygiene), parameterisations,
transforms, the cheap looks and the CLI. Tiny models, few steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support import Snapshot
from tiny_models import RaisingNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens import objectives as obj
from convlens.errors import (
    ConvlensError,
    InputShapeError,
    LayerError,
    ObjectiveError,
    TargetError,
)
from convlens.visualization import transforms as T
from convlens.visualization.inspection import (
    activation_grid,
    activation_maps,
    filter_grid,
    first_layer_filters,
    image_grid,
)
from convlens.visualization.objectives import LOGITS, Context
from convlens.visualization.param import (
    COLOUR_BASIS,
    FFTImage,
    colour_basis,
    from_rgb,
    spectrum_scale,
    to_rgb,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


def vgg(dtype: torch.dtype = torch.float32) -> nn.Module:
    return seeded(TinyVGG(classes=5), dtype=dtype)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- registry-driven: every objective improves under a few steps ----------------------
# Arguments per registered objective for TinyVGG (features.2: 8 channels at 16x16,
# features.5: 16 channels at 8x8 after pooling, 5 classes). A newly registered objective
# without an entry here fails test_every_objective_has_test_arguments.
ARGS = {
    "channel": (("features.2", 3), {}),
    "neuron": (("features.2", 3), {}),
    "layer": (("features.5",), {}),
    "direction": (("features.5", torch.linspace(-1, 1, 16)), {}),
    "direction_neuron": (("features.5", torch.linspace(-1, 1, 16)), {}),
    "class_logit": ((2,), {}),
    "class_probability": ((2,), {}),
    "diversity": (("features.2",), {}),
    "total_variation": ((), {}),
    "l1": ((), {}),
    "l2": ((), {}),
    "blur": ((), {}),
}


def test_every_objective_has_test_arguments() -> None:
    assert set(ARGS) == {spec.name for spec in obj.registered()}
    for spec in obj.registered():
        assert spec.kind in ("activation", "class", "penalty")
        assert spec.reference and spec.summary


@pytest.mark.parametrize("param", ["fft", "pixel"])
@pytest.mark.parametrize("name", sorted(ARGS))
def test_every_objective_decreases_its_loss(name: str, param: str) -> None:
    spec = next(s for s in obj.registered() if s.name == name)
    args, kwargs = ARGS[name]
    goal = spec.factory(*args, **kwargs)
    batch = 3 if name == "diversity" else 1
    start = None
    if spec.kind == "penalty":  # penalties are subtracted (the loss is -goal either way);
        goal = -goal  # they start from a noisy image, where they have work to do
        start = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = cl.visualize(vgg(), goal, size=16, steps=10, seed=0, param=param, transforms=None,
                       batch=batch, lr=0.05, init=start)
    loss = -res.trace[:, 0]
    assert loss[-1] < loss[0], f"{name}: loss {loss.tolist()}"


# --- objectives against their definitions (float64, synthetic activations) -----------
def _context(batch: int = 3) -> Context:
    acts = {"a": rand(batch, 6, 5, 7, seed=1), "b": rand(batch, 4, 3, 3, seed=2),
            "flat": rand(batch, 9, seed=3), LOGITS: rand(batch, 5, seed=4)}
    image = torch.rand(batch, 3, 8, 9, generator=torch.Generator().manual_seed(5),
                       dtype=torch.float64)
    return Context(acts, image, labels=["ant", "bee", "tabby", "tiger cat", "fly"])


def test_unit_objectives_follow_their_definitions() -> None:
    c = _context()
    a = c.activations["a"]
    torch.testing.assert_close(obj.channel("a", 2)(c), a[:, 2].mean())
    torch.testing.assert_close(obj.channel("flat", 4)(c), c.activations["flat"][:, 4].mean())
    # neuron defaults to the centre (row h // 2, column w // 2) like Lucid
    torch.testing.assert_close(obj.neuron("a", 2)(c), a[:, 2, 2, 3].mean())
    torch.testing.assert_close(obj.neuron("a", 2, x=6, y=1)(c), a[:, 2, 1, 6].mean())
    torch.testing.assert_close(obj.layer("a")(c), (a * a).mean())
    torch.testing.assert_close(obj.channel("a", 1, batch=2)(c), a[2, 1].mean())


def test_direction_is_the_mean_projection_on_the_unit_vector() -> None:
    c = _context()
    a = c.activations["a"]
    v = rand(6, seed=9)
    expected = sum(float(a[n, :, i, j] @ v) for n in range(3) for i in range(5)
                   for j in range(7)) / (3 * 5 * 7) / float(v.norm())
    assert float(obj.direction("a", v)(c)) == pytest.approx(expected, rel=1e-10)
    centre = sum(float(a[n, :, 2, 3] @ v) for n in range(3)) / 3 / float(v.norm())
    assert float(obj.direction_neuron("a", v)(c)) == pytest.approx(centre, rel=1e-10)
    # with cossim_pow the score of each position is <a, u> * max(cos, 0.1) ** p
    u = v / v.norm()
    total = 0.0
    for n in range(3):
        for i in range(5):
            for j in range(7):
                x = a[n, :, i, j]
                dot = float(x @ u)
                total += dot * max(dot / float(x.norm()), 0.1) ** 2
    assert float(obj.direction("a", v, cossim_pow=2)(c)) == pytest.approx(total / 105, rel=1e-9)


def test_class_objectives() -> None:
    c = _context()
    logits = c.activations[LOGITS]
    torch.testing.assert_close(obj.class_logit(3)(c), logits[:, 3].mean())
    torch.testing.assert_close(obj.class_logit("tabby")(c), logits[:, 2].mean())
    torch.testing.assert_close(obj.class_logit("Tiger Cat")(c), logits[:, 3].mean())
    expected = torch.exp(logits[:, 1]) / torch.exp(logits).sum(1)
    torch.testing.assert_close(obj.class_probability(1)(c), expected.mean())
    with pytest.raises(TargetError, match="out of range"):
        obj.class_logit(5)(c)
    with pytest.raises(TargetError, match=r"did you mean 'tiger cat'\?"):
        obj.class_logit("tiger")(c)


def test_diversity_is_the_mean_pairwise_cosine_of_gram_matrices() -> None:
    c = _context(batch=4)
    a = c.activations["a"]
    grams = []
    for n in range(4):
        f = a[n].reshape(6, -1)
        g = (f @ f.T).flatten()
        grams.append(g / g.norm())
    pairs = [float(grams[i] @ grams[j]) for i in range(4) for j in range(4) if i != j]
    assert float(obj.diversity("a")(c)) == pytest.approx(sum(pairs) / len(pairs), rel=1e-10)
    assert float(obj.diversity("a")(c.select(0))) == 0.0
    same = Context({"a": a[:1].expand(3, -1, -1, -1)}, c.image[:3])
    assert float(obj.diversity("a")(same)) == pytest.approx(1.0)


def test_regularisers() -> None:
    c = _context()
    x = c.image
    h, w = x.shape[-2:]
    tv = sum(abs(float(x[n, ch, i, j + 1] - x[n, ch, i, j])) for n in range(3) for ch in range(3)
             for i in range(h) for j in range(w - 1)) / (3 * 3 * h * (w - 1))
    tv += sum(abs(float(x[n, ch, i + 1, j] - x[n, ch, i, j])) for n in range(3)
              for ch in range(3) for i in range(h - 1) for j in range(w)) / (3 * 3 * (h - 1) * w)
    assert float(obj.total_variation()(c)) == pytest.approx(tv, rel=1e-10)
    assert float(obj.l1()(c)) == pytest.approx(float((x - 0.5).abs().mean()))
    assert float(obj.l1("a", constant=0)(c)) == pytest.approx(
        float(c.activations["a"].abs().mean()))
    assert float(obj.l2()(c)) == pytest.approx(float(((x - 0.5) ** 2).mean()))
    # blur's gradient is x - blur(x) / N: one gradient step is a partial 3x3 box blur
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(obj.blur()(Context({}, leaf)), leaf)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    box = sum(padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    torch.testing.assert_close(grad * x.numel(), x - box)


def test_objectives_compose() -> None:
    c = _context()
    a, b = obj.channel("a", 1), obj.channel("b", 2)
    va, vb = float(a(c)), float(b(c))
    goal = 0.5 * a - b + 2
    assert float(goal(c)) == pytest.approx(0.5 * va - vb + 2)
    assert goal.layers == {"a", "b"}
    assert float((a / 4)(c)) == pytest.approx(va / 4)
    assert float((-a)(c)) == pytest.approx(-va)
    assert float((a * b)(c)) == pytest.approx(va * vb)
    assert float((1 - a)(c)) == pytest.approx(1 - va)
    assert float(sum([a, b, a])(c)) == pytest.approx(2 * va + vb)
    assert "a:1" in goal.name and "b:2" in goal.name
    with pytest.raises(TypeError):
        a + "b:2"  # noqa: B018
    with pytest.raises(ObjectiveError, match="zero"):
        a / 0  # noqa: B018


def test_string_shorthands() -> None:
    c = _context()
    assert float(obj.as_objective("a:3")(c)) == float(obj.channel("a", 3)(c))
    assert obj.as_objective("blocks.12.project:7").layers == {"blocks.12.project"}
    assert float(obj.as_objective("class:2")(c)) == float(obj.class_logit(2)(c))
    assert float(obj.as_objective("class:tabby")(c)) == float(obj.class_logit(2)(c))
    for bad in ("blocks.8", "blocks.8:x", "class:", ":3"):
        with pytest.raises(ObjectiveError, match="blocks.8:12|class"):
            obj.as_objective(bad)
    with pytest.raises(ObjectiveError, match="out of range.*6 channels"):
        obj.channel("a", 6)(c)
    with pytest.raises(ObjectiveError, match="outside"):
        obj.neuron("a", 0, x=7)(c)
    with pytest.raises(ObjectiveError, match="4 entries but layer 'b' has 4|has 4 channels"):
        obj.direction("b", [1.0, 2.0, 3.0])(c)


# --- the optimisation loop -----------------------------------------------------------
def test_visualize_contract_and_reproducibility() -> None:
    model = vgg()
    goals = [obj.channel("features.2", k) for k in range(3)]
    res = cl.visualize(model, goals, size=20, steps=4, seed=3)
    assert res.images.shape == (3, 3, 20, 20) and res.images.dtype == torch.float32
    assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    assert res.trace.shape == (4, 3) and res.names == ["features.2:0", "features.2:1",
                                                       "features.2:2"]
    again = cl.visualize(model, goals, size=20, steps=4, seed=3)
    assert torch.equal(res.images, again.images) and torch.equal(res.trace, again.trace)
    other = cl.visualize(model, goals, size=20, steps=4, seed=4)
    assert not torch.allclose(res.images, other.images)
    # shorthand strings work wherever objectives do
    short = cl.visualize(model, ["features.2:0", "features.2:1", "features.2:2"], size=20,
                         steps=4, seed=3)
    assert torch.equal(short.images, res.images)


def test_batched_objectives_equal_separate_runs() -> None:
    """Objective i sees only image i: one batched run equals K single runs (same start)."""
    model = vgg(torch.float64)
    start = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    goals = [obj.channel("features.2", 1), obj.class_logit(3), obj.layer("features.5")]
    batched = cl.visualize(model, goals, init=start, steps=5, seed=1, transforms="standard")
    for i, goal in enumerate(goals):
        single = cl.visualize(model, goal, init=start[i], steps=5, seed=1,
                              transforms="standard")
        torch.testing.assert_close(batched.images[i], single.images[0])
        torch.testing.assert_close(batched.trace[:, i], single.trace[:, 0])


class Recorder(nn.Module):
    """Records every input batch it sees, then runs TinyVGG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = vgg()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_the_models_normalisation_is_applied() -> None:
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    recorder = Recorder()
    clf = cl.Classifier(recorder, input_size=20, mean=mean, std=std, device="cpu")
    start = cl.visualize(clf, obj.class_logit(1), steps=0, seed=0).images
    assert start.shape[-2:] == (20, 20)  # the classifier's input size is the default size
    cl.visualize(clf, obj.class_logit(1), steps=1, seed=0, transforms=None)
    expected = (start - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(recorder.seen[-1], expected)
    # a plain module gets ImageNet's mean/std unless told otherwise
    recorder.seen.clear()
    cl.visualize(recorder, obj.class_logit(1), size=20, steps=1, seed=0, transforms=None)
    imagenet = ((start - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    torch.testing.assert_close(recorder.seen[-1], imagenet)


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Staged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.late = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), Counting())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.late(self.early(x)).mean(dim=(2, 3)))


def test_forward_stops_after_the_deepest_needed_layer() -> None:
    model = seeded(Staged(), dtype=torch.float32)
    counter = model.late[1]
    cl.visualize(model, obj.channel("early.0", 1), size=16, steps=4)
    assert counter.calls == 1  # only the first (counting) pass ran the whole network
    counter.calls = 0
    cl.visualize(model, obj.channel("early.0", 1) + obj.channel("late.0", 0), size=16, steps=4)
    assert counter.calls == 1  # late.0 runs before the counter
    counter.calls = 0
    cl.visualize(model, obj.channel("early.0", 1) + obj.channel("late.1", 0), size=16, steps=4)
    assert counter.calls == 4
    counter.calls = 0
    cl.visualize(model, obj.class_logit(0), size=16, steps=4)
    assert counter.calls == 4
    # a module called twice (TinyResNet's shared in-place ReLU) is captured at its last call
    net = seeded(TinyResNet(), dtype=torch.float64)
    res = cl.visualize(net, obj.channel("layer1.relu", 0), size=16, steps=3, transforms=None)
    assert res.trace[-1, 0] > res.trace[0, 0]


def test_visualize_leaves_no_trace_and_no_weight_gradients() -> None:
    model = seeded(TinyResNet(), dtype=torch.float32)
    model.train()
    model.layer1.bn1.eval()
    snap = Snapshot(model)
    goal = obj.channel("layer1.relu", 1) - 0.1 * obj.diversity("layer2") + obj.class_logit(0)
    cl.visualize(model, goal, size=16, steps=3, batch=2)
    snap.assert_unchanged()
    with torch.no_grad():  # also inside no_grad / inference mode
        cl.visualize(model, "layer2.conv1:0", size=16, steps=2)
    with torch.inference_mode():
        cl.visualize(model, "layer2.conv1:0", size=16, steps=2)
    snap.assert_unchanged()


def test_failures_leave_no_trace() -> None:
    raising = RaisingNet()
    snap = Snapshot(raising)
    with pytest.raises((ConvlensError, RuntimeError), match="boom"):
        cl.visualize(raising, obj.channel("conv", 0), size=16, steps=2)
    snap.assert_unchanged()
    model = vgg()
    snap = Snapshot(model)
    with pytest.raises(LayerError, match="unknown layer 'features.99'.*Valid layers"):
        cl.visualize(model, obj.channel("features.99", 0), size=16, steps=2)
    with pytest.raises(ObjectiveError, match="channel 8 is out of range"):
        cl.visualize(model, obj.channel("features.2", 8), size=16, steps=2)
    with pytest.raises(TargetError, match="out of range"):
        cl.visualize(model, obj.class_logit(5), size=16, steps=2)
    with pytest.raises(ObjectiveError, match="unknown parameterisation"):
        cl.visualize(model, "features.2:0", param="wavelet", size=16, steps=2)
    with pytest.raises(ObjectiveError, match="batch=2 but 3 objectives"):
        cl.visualize(model, ["features.2:0"] * 3, batch=2, size=16, steps=2)
    with pytest.raises(ObjectiveError, match="unknown transforms"):
        cl.visualize(model, "features.2:0", transforms="fancy", size=16, steps=2)
    snap.assert_unchanged()


@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_deepdream_starts_from_the_photo(param: str, tmp_path: Path) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    model = vgg()
    start = cl.visualize(model, obj.layer("features.5"), init=path, size=(30, 40), steps=0,
                         param=param)
    expected = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(start.images[0], expected, atol=2e-4, rtol=0)
    dream = cl.visualize(model, obj.layer("features.5"), init=path, size=(30, 40), steps=8,
                         param=param, transforms=None)
    assert dream.trace[-1, 0] > dream.trace[0, 0]
    change = (dream.images[0] - expected).abs().mean()
    assert 0.001 < float(change) < 0.25  # dreamed on, still the photo underneath
    # without size= a photo keeps its aspect, shorter side at the model's input size
    assert cl.visualize(model, "features.2:0", init=path, steps=0).images.shape[-2:] == (224, 299)


def test_snapshots_time_limit_and_cppn() -> None:
    model = vgg()
    res = cl.visualize(model, "features.2:0", size=16, steps=4, snapshots=(0, 2, 4))
    assert sorted(res.snapshots) == [0, 2, 4]
    torch.testing.assert_close(res.snapshots[4], res.images)
    quick = cl.visualize(model, "features.2:0", size=16, steps=50, time_limit=0.0)
    assert len(quick.trace) == 1
    cppn = cl.visualize(model, "features.2:0", size=16, steps=10, param="cppn", transforms=None)
    assert cppn.trace[-1, 0] > cppn.trace[0, 0]
    assert float(cppn.images.min()) >= 0 and float(cppn.images.max()) <= 1


def test_result_saves_pngs_and_a_grid(tmp_path: Path) -> None:
    res = cl.visualize(vgg(), ["features.2:0", "class:1"], size=16, steps=1)
    paths = res.save(tmp_path)
    assert [p.name for p in paths] == ["features.2_0.png", "class_1.png", "grid.png"]
    first = np.asarray(Image.open(paths[0]))
    expected = (res.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(first, expected)
    assert res._repr_png_().startswith(b"\x89PNG")


# --- parameterisations and transforms ------------------------------------------------
def test_colour_basis_is_derived_from_the_bundled_photos() -> None:
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.stereo_motorcycle()[0]]
    derived = colour_basis([torch.from_numpy(p).permute(2, 0, 1) / 255.0 for p in photos])
    torch.testing.assert_close(derived, torch.tensor(COLOUR_BASIS, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    # it decorrelates: the latent covariance of the photos' logits is... at least the
    # basis is invertible and to_rgb / from_rgb are inverses
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(to_rgb(from_rgb(x)), x)
    torch.testing.assert_close(to_rgb(from_rgb(x, False), False), x)


def test_fft_parameterisation_scales_by_one_over_frequency() -> None:
    scale = spectrum_scale(8, 8, dtype=torch.float64)
    assert scale.shape == (8, 5)
    assert float(scale[0, 0]) == 8.0  # the DC term is floored at f = 1 / max(H, W)
    assert float(scale[0, 1]) == pytest.approx(8.0)  # f = 1/8
    assert float(scale[0, 4]) == pytest.approx(2.0)  # f = 1/2
    assert float(scale[3, 4]) == pytest.approx(1 / math.hypot(3 / 8, 0.5))
    # one spectral coefficient -> one sinusoid of amplitude scale * value, before the sigmoid
    g = torch.Generator().manual_seed(0)
    p = FFTImage(1, 8, 8, generator=g, device=torch.device("cpu"), dtype=torch.float64,
                 decorrelate=False)
    with torch.no_grad():
        p.spectrum.zero_()
        p.spectrum[0, 0, 0, 2, 0] = 1.0
    latent = torch.logit(p()[0, 0].detach())
    grid = torch.arange(8, dtype=torch.float64)
    expected = 2 * float(scale[0, 2]) * torch.cos(2 * math.pi * 2 * grid / 8) / 8 / 4
    torch.testing.assert_close(latent, expected.expand(8, 8), atol=1e-8, rtol=1e-6)


def test_transforms_are_seeded_and_compose() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for t in (T.standard(), T.lucid()):
        a = t(x, torch.Generator().manual_seed(5))
        b = t(x, torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        assert not torch.equal(a, t(x, torch.Generator().manual_seed(6)))
    # the standard recipe keeps the size; Lucid's chain changes it
    assert {tuple(T.standard()(x, torch.Generator().manual_seed(s)).shape) for s in range(8)} \
        == {(2, 3, 32, 32)}
    assert len({tuple(T.lucid()(x, torch.Generator().manual_seed(s)).shape)
                for s in range(12)}) > 1
    padded = T.pad(4)(x, torch.Generator())
    assert padded.shape[-1] == 40 and torch.all(padded[..., :4, :] == 0.5)
    assert T.pad(2, "reflect")(x, torch.Generator()).shape[-1] == 36
    jittered = T.jitter(6)(x, torch.Generator().manual_seed(1))
    assert jittered.shape[-2:] == (26, 26)
    found = any(torch.equal(jittered, x[..., i:i + 26, j:j + 26]) for i in range(7)
                for j in range(7))
    assert found
    assert T.random_scale([0.5])(x, torch.Generator()).shape[-2:] == (16, 16)
    torch.testing.assert_close(T.random_rotate([0])(x, torch.Generator()), x)
    quarter = T.rotate(x, 90)
    torch.testing.assert_close(quarter[..., 2:-2, 2:-2], torch.rot90(x, 1, (2, 3))[..., 2:-2, 2:-2],
                               atol=1e-5, rtol=0)
    composed = T.compose(T.pad(2), T.jitter(4))(x, torch.Generator().manual_seed(0))
    assert composed.shape[-2:] == (32, 32)
    assert T.resolve([T.pad(1)])(x, torch.Generator()).shape[-1] == 34
    assert T.resolve("none") is None and T.resolve(None) is None


def test_random_affine_shifts_by_whole_pixels_with_grey_outside() -> None:
    x = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    identity = T.random_affine(0)(x, torch.Generator())
    torch.testing.assert_close(identity, x)
    generator = torch.Generator().manual_seed(3)
    shift = T.random_affine(3)
    moved = shift(x, generator)
    replay = torch.Generator().manual_seed(3)
    for _ in ("scale", "angle"):  # the draws before the shift
        torch.randint(1, (1,), generator=replay)
    dx, dy = (int(v) - 3 for v in torch.randint(7, (2,), generator=replay))
    assert (dx, dy) != (0, 0)
    expected = torch.full_like(x, 0.5)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                expected[..., i, j] = x[..., i + dy, j + dx]
    torch.testing.assert_close(moved, expected)
    # a zoom by 2 about the centre: the centre pixel of an odd-sized image stays put
    odd = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    zoomed = T.random_affine(0, scales=[2.0])(odd, torch.Generator())
    torch.testing.assert_close(zoomed[..., 4, 4], odd[..., 4, 4])


# --- cheap looks -----------------------------------------------------------------------
def test_activation_maps_are_ranked_by_mean() -> None:
    model = vgg(torch.float64)
    x = rand(1, 3, 16, 16, seed=7)
    maps, order = activation_maps(model, x, "features.2")
    with torch.no_grad():
        reference = model.features[:3](x)[0]
    torch.testing.assert_close(maps, reference.float())
    means = reference.mean(dim=(1, 2))
    assert order.tolist() == sorted(range(8), key=lambda k: -float(means[k]))
    grid = activation_grid(model, x, "features.2", top=3, tile=10, columns=3)
    assert grid.size[0] == 3 * (10 + 2) + 2


def test_activation_maps_use_the_classifiers_preprocessing() -> None:
    model = vgg()
    clf = cl.Classifier(model, input_size=16, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                        device="cpu")
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3),
                                                              dtype=np.uint8))
    maps, _ = activation_maps(clf, photo, "features.2")
    with torch.no_grad():
        expected = model.features[:3](clf.preprocess([photo]))[0]
    torch.testing.assert_close(maps, expected)


def test_first_layer_filters() -> None:
    model = vgg()
    filters = first_layer_filters(model)
    w = model.features[0].weight.detach()
    torch.testing.assert_close(filters, 0.5 + 0.5 * w / w.abs().max())
    assert filters.min() >= 0 and filters.max() <= 1
    assert filter_grid(model, tile=12, columns=4).size == (4 * 14 + 2, 2 * 14 + 2)
    with pytest.raises(LayerError, match="8 input channels"):
        first_layer_filters(model, "features.2")
    with pytest.raises(LayerError, match="not an nn.Conv2d"):
        first_layer_filters(model, "features.1")


def test_image_grid_layout() -> None:
    tiles = [Image.new("RGB", (5, 5), (i * 40, 0, 0)) for i in range(5)]
    grid = image_grid(tiles, columns=2, padding=1)
    assert grid.size == (2 * 6 + 1, 3 * 6 + 1)
    assert grid.getpixel((1 + 6, 1 + 6)) == (120, 0, 0)  # row 1, column 1 = tile 3
    with pytest.raises(InputShapeError):
        image_grid([])


# --- CLI --------------------------------------------------------------------------------
TINY = ["--model", f"{FIXTURES / 'tiny_model.py'}:build", "--labels",
        str(FIXTURES / "tiny_labels.txt"), "--input-size", "32", "--device", "cpu"]


def _run(*args: str):
    """Run the CLI in-process (the installed script is exercised by tests/test_cli.py)."""
    from typer.testing import CliRunner

    from convlens.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    result.returncode = result.exit_code
    return result


def test_cli_visualize_channels_and_classes(tmp_path: Path) -> None:
    result = _run("visualize", *TINY, "--layer", "features.2", "--channels", "0-2,5",
                  "--steps", "3", "--size", "24", "--out", str(tmp_path / "ch"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "ch" / "results.json").read_text())
    assert [i["objective"] for i in record["images"]] == [f"features.2:{k}" for k in
                                                          (0, 1, 2, 5)]
    assert (tmp_path / "ch" / "grid.png").is_file()
    assert Image.open(tmp_path / "ch" / "features.2_5.png").size == (24, 24)
    labels = (FIXTURES / "tiny_labels.txt").read_text().split("\n")
    result = _run("visualize", *TINY, "--class", labels[1], "--class", "3", "--steps", "2",
                  "--out", str(tmp_path / "cls"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cls").glob("class_*.png"))) == 2


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    for args, message in [
        (["--layer", "features.2", "--channels", "0-9"], "channel 8 is out of range"),
        (["--layer", "nope"], "unknown layer 'nope'"),
        ([], "give either --layer"),
        (["--class", "no such class"], "unknown class name"),
        (["--layer", "features.2", "--channels", "x"], "--channels takes"),
    ]:
        result = _run("visualize", *TINY, *args, "--steps", "1", "--out", str(tmp_path))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_cli_activations(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3),
                                                      dtype=np.uint8)).save(photo)
    result = _run("activations", str(photo), *TINY, "--layer", "features.2", "--filters",
                  "--out", str(tmp_path / "acts"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "acts" / "p.features.2.activations.png").is_file()
    assert (tmp_path / "acts" / "filters.png").is_file()
    assert "most active: #" in result.stdout


# --- the bundled model: the demo gallery (small and fast here) ------------------------
@pytest.mark.slow
def test_demo_gallery(tmp_path: Path) -> None:
    from convlens.visualization.gallery import CLASSES, demo_gallery, gallery_figure

    clf = cl.load_model(device="cpu")
    records = demo_gallery(clf, tmp_path, budget_seconds=60, size=32, steps=2)
    assert [r["title"].split(" (")[0] for r in records] == [
        "Channels of an early layer", "Channels of a middle layer", "Channels of a late layer",
        "Output classes"]
    for record in records:
        assert Path(record["path"]).is_file() and len(record["items"]) == 6
        assert "2 steps at 32 px" in record["caption"]
        for item in record["items"]:
            assert Image.open(item["path"]).size == (32, 32)
    assert records[3]["items"][2]["caption"].startswith(clf.label(CLASSES[2]) + " (p=")
    assert gallery_figure(records).width >= 6 * 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    import copy

    model = vgg()
    goals = [obj.channel("features.2", 1), obj.class_logit(2)]
    on_cpu = cl.visualize(model, goals, size=24, steps=5, seed=0)
    gpu_model = copy.deepcopy(model).cuda()
    snap = Snapshot(gpu_model)
    on_gpu = cl.visualize(gpu_model, goals, size=24, steps=5, seed=0)
    snap.assert_unchanged()
    assert on_gpu.images.device.type == "cuda"
    torch.testing.assert_close(on_gpu.images.cpu(), on_cpu.images, atol=2e-3, rtol=0)
    clf = cl.Classifier(gpu_model, input_size=24, device="cuda")
    assert cl.visualize(clf, "features.2:0", steps=2).images.device.type == "cuda"


def test_visualize_reports_progress_as_events_to_a_callback() -> None:
    events = []
    cl.visualize(vgg(), obj.channel("features.0", 0), size=16, steps=10, seed=0,
                 progress=events.append)
    assert [e.stage for e in events] == ["visualize"] * len(events)
    assert events[0].done == 0 and events[-1].done == 10 and events[-1].total == 10
    assert events[-1].message.startswith("objective ")
    assert all(a.done <= b.done for a, b in zip(events, events[1:]))


def test_visualize_draws_nothing_without_being_asked(capsys) -> None:
    cl.visualize(vgg(), obj.channel("features.0", 0), size=16, steps=3, seed=0, progress=False)
    assert capsys.readouterr() == ("", "")
