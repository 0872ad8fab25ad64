"""Shapley sampling, KernelSHAP, LIME and feature ablation over feature groups: against exact
Shapley values enumerated in float64, against references written from their papers, against
closed forms on a linear model, and against Captum; plus the segmentation they share."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from support import assert_close_to_reference
from tiny_models import LinearNet, TinyResNet, TinyVGG, seeded

import convlens as cl
from convlens.attribution.superpixels import feature_values, grid_segments, segment
from convlens.errors import MethodError

METHODS = ("shapley_sampling", "kernel_shap", "lime", "feature_ablation")
SEEDED = ("shapley_sampling", "kernel_shap", "lime")
_close = assert_close_to_reference


def _x(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def _play(model, x, target, segments, baseline, coalition) -> torch.Tensor:
    """v(S) for one sample: x with the features in S kept, the rest set to the baseline."""
    keep = torch.zeros_like(segments, dtype=torch.bool)
    for k in coalition:
        keep |= segments == k
    with torch.no_grad():
        image = torch.where(keep, x, baseline)
        return model(image.unsqueeze(0))[0, target]


def exact_shapley(model, x, target, segments, baseline=0.0) -> torch.Tensor:
    """phi_k = sum over S without k of |S|! (K - |S| - 1)! / K! (v(S + k) - v(S)), every
    coalition enumerated (Shapley 1953), per sample."""
    out = []
    baseline = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    for i in range(x.shape[0]):
        count = int(segments[i].max()) + 1
        value = {s: _play(model, x[i], target[i], segments[i], baseline[i], s)
                 for size in range(count + 1)
                 for s in itertools.combinations(range(count), size)}
        phi = torch.zeros(count, dtype=torch.float64)
        for k in range(count):
            for s, v in value.items():
                if k in s:
                    continue
                weight = (math.factorial(len(s)) * math.factorial(count - len(s) - 1)
                          / math.factorial(count))
                phi[k] += weight * (value[tuple(sorted(s + (k,)))] - v)
        out.append(phi)
    return torch.nn.utils.rnn.pad_sequence(out, batch_first=True)


def _values(attribution: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    return feature_values(attribution.double(), segments)


def _targets(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# ---- segmentation ----------------------------------------------------------------------------

def test_grid_cells_follow_their_definition() -> None:
    labels = grid_segments(5, 7, (2, 3))
    expected = torch.tensor([[0, 0, 0, 1, 1, 2, 2]] * 3 + [[3, 3, 3, 4, 4, 5, 5]] * 2)
    assert torch.equal(labels, expected)


def test_slic_segments_the_per_channel_rescaled_sample_and_ignores_the_normalisation() -> None:
    from skimage.segmentation import slic

    photo = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    photo[:, :, :12] *= 0.3   # some structure for SLIC to follow
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = (photo - mean) / std
    got = segment(x, "slic", n_segments=12)
    for i in range(2):
        image = photo[i].permute(1, 2, 0).numpy()
        image = (image - image.min((0, 1))) / (image.max((0, 1)) - image.min((0, 1)))
        expected = slic(image, n_segments=12, start_label=0, channel_axis=-1)
        assert np.array_equal(got[i].numpy(), expected)
    assert got.dtype == torch.int64 and got.shape == (2, 24, 24)
    assert torch.equal(got, segment(photo, "slic", n_segments=12))
    assert torch.equal(got, segment(x, n_segments=12))   # deterministic, slic the default


@pytest.mark.parametrize("segmentation", ["slic", "quickshift", "grid"])
def test_segments_are_numbered_from_zero_without_gaps(segmentation: str) -> None:
    labels = segment(_x(2, 32), segmentation)
    for one in labels:
        assert torch.equal(torch.unique(one), torch.arange(int(one.max()) + 1))


@pytest.mark.parametrize("method", METHODS)
def test_each_map_is_spread_over_the_segments_that_segment_returns(method: str) -> None:
    model, x = seeded(TinyVGG()), _x(2, 24)
    options = {"permutations": 2} if method == "shapley_sampling" else {}
    options |= {"samples": 64} if method in ("kernel_shap", "lime") else {}
    got = cl.attribute(model, x, method, segmentation="slic", n_segments=10, **options)
    segments = segment(x, "slic", n_segments=10)
    values = _values(got, segments)
    sizes = torch.stack([torch.bincount(s.flatten()) for s in segments]).double()
    expected = (values / sizes).gather(1, segments.view(2, -1)).view(2, 1, 24, 24)
    _close(got, expected)   # constant on each segment, the value divided by its size


def test_given_segments_are_renumbered_and_broadcast() -> None:
    model, x = seeded(TinyVGG()), _x(2)
    labels = grid_segments(16, 16, (2, 2)) * 10 - 7   # labels -7, 3, 13, 23
    got = cl.attribute(model, x, "feature_ablation", segments=labels)
    expected = cl.attribute(model, x, "feature_ablation", segmentation="grid", grid=2)
    _close(got, expected, rtol=1e-6)


@pytest.mark.parametrize(("options", "match"), [
    ({"segmentation": "felzenszwalb"}, "unknown segmentation"),
    ({"segmentation": "quickshift", "n_segments": 10}, "no target number"),
    ({"segmentation": "slic", "grid": 4}, "grid= is for segmentation='grid'"),
    ({"segmentation": "grid", "n_segments": 4}, "n_segments steers SLIC only"),
    ({"segmentation": "grid", "grid": 17}, "more cells than"),
    ({"segmentation": "grid", "grid": (2, 0)}, "positive int"),
    ({"n_segments": 0}, "n_segments must be a positive"),
    ({"segments": torch.zeros(16, 16)}, "integer labels"),
    ({"segments": torch.zeros(16, 16, dtype=torch.bool)}, "integer labels"),
    ({"segments": torch.zeros(3, 16, 16, dtype=torch.long)}, r"shape \(2, 16, 16\)"),
    ({"segments": [[0, 1]]}, "integer tensor"),
    ({"segments": torch.zeros(16, 16, dtype=torch.long), "n_segments": 4}, "drop them"),
    ({"baseline": "blur"}, "baseline 'blur' is unknown"),
    ({"batch_size": 0}, "batch_size"),
])
@pytest.mark.parametrize("method", METHODS)
def test_bad_feature_options_are_refused(method: str, options, match: str) -> None:
    with pytest.raises(MethodError, match=match):
        cl.attribute(seeded(TinyVGG()), _x(2), method, **options)


@pytest.mark.parametrize(("method", "options", "match"), [
    ("shapley_sampling", {"permutations": 0}, "permutations"),
    ("kernel_shap", {"samples": 0}, "samples"),
    ("kernel_shap", {"paired": 1}, "paired"),
    ("lime", {"samples": 1.5}, "samples"),
    ("lime", {"kernel_width": 0.0}, "kernel_width"),
    ("lime", {"alpha": -1.0}, "alpha"),
])
def test_bad_estimator_options_are_refused(method: str, options, match: str) -> None:
    with pytest.raises(MethodError, match=match):
        cl.attribute(seeded(TinyVGG()), _x(1), method, segmentation="grid", grid=2, **options)


# ---- Shapley values: exact enumeration --------------------------------------------------------

def _game(n: int = 2, cells: tuple[int, int] = (2, 2), model=None):
    model = model or seeded(TinyResNet())
    x = _x(n)
    return model, x, _targets(model, x), grid_segments(16, 16, cells).expand(n, 16, 16)


def test_shapley_sampling_is_the_average_over_the_seeded_orderings() -> None:
    model, x, target, segments = _game(2, (2, 3))
    got = cl.attribute(model, x, "shapley_sampling", segmentation="grid", grid=(2, 3),
                       permutations=5, seed=3, baseline=-0.5, batch_size=4)
    generator = torch.Generator().manual_seed(3)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    baseline = torch.full_like(x[0], -0.5)
    for _ in range(5):
        order = torch.randperm(6, generator=generator).tolist()
        for i in range(2):
            for j, k in enumerate(order):
                expected[i, k] += (_play(model, x[i], target[i], segments[i], baseline,
                                         order[:j + 1])
                                   - _play(model, x[i], target[i], segments[i], baseline,
                                           order[:j]))
    _close(_values(got, segments), expected / 5)


def test_shapley_sampling_is_efficient_and_converges_to_the_exact_values() -> None:
    model, x, target, segments = _game(2, (2, 2))
    exact = exact_shapley(model, x, target, segments)
    got = _values(cl.attribute(model, x, "shapley_sampling", segmentation="grid", grid=2,
                               permutations=1000, seed=1, batch_size=512), segments)
    with torch.no_grad():
        delta = model(x)[[0, 1], target] - model(torch.zeros_like(x))[[0, 1], target]
    _close(got.sum(1), delta)   # efficiency holds for every estimate, not just in the limit
    # the estimate's error is a mean of 1000 i.i.d. marginal contributions: within 5 standard
    # errors, with the standard deviation taken over all 4! orderings
    spread = torch.zeros(2, 4, dtype=torch.float64)
    for i in range(2):
        contributions = []
        for order in itertools.permutations(range(4)):
            row = torch.zeros(4, dtype=torch.float64)
            for j, k in enumerate(order):
                row[k] = (_play(model, x[i], target[i], segments[i], torch.zeros_like(x[i]),
                                order[:j + 1])
                          - _play(model, x[i], target[i], segments[i], torch.zeros_like(x[i]),
                                  order[:j]))
            contributions.append(row)
        spread[i] = torch.stack(contributions).std(0, correction=0)
    assert bool((spread > 0).all())
    assert bool(((got - exact).abs() <= 5 * spread / math.sqrt(1000) + 1e-5).all())


@pytest.mark.parametrize("cells", [(2, 2), (2, 3), (3, 3)])
def test_kernel_shap_with_every_coalition_is_the_exact_shapley_value(cells) -> None:
    model, x, target, segments = _game(2, cells)
    count = cells[0] * cells[1]
    got = cl.attribute(model, x, "kernel_shap", segmentation="grid", grid=cells,
                       samples=2 ** count - 2, batch_size=50)
    _close(_values(got, segments), exact_shapley(model, x, target, segments))


class CellGame(torch.nn.Module):
    """A ReLU network on the means of a 2 x 5 grid of cells: a game with interactions of
    every order, cheap enough to enumerate its 1024 coalitions."""

    def __init__(self, cells: tuple[int, int] = (2, 5), hidden: int = 12) -> None:
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(cells)
        self.hidden = torch.nn.Linear(cells[0] * cells[1], hidden)
        self.out = torch.nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.pool(x.mean(1)).flatten(1)
        return self.out(torch.relu(self.hidden(cells)))


def _cell_game():
    model = seeded(CellGame())
    x = 2 * torch.rand(1, 3, 16, 16, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0))
    segments = grid_segments(16, 16, (2, 5)).expand(1, 16, 16)
    target = _targets(model, x)
    return model, x, target, segments, exact_shapley(model, x, target, segments)


def _uniform_kernel_limit(model, x, target, segments) -> torch.Tensor:
    """What a KernelSHAP that forgot the Shapley kernel converges to: every coalition,
    equal weights, the same constraints."""
    from convlens.attribution.shapley import all_coalitions, constrained_least_squares

    table = all_coalitions(10)
    zeros = torch.zeros_like(x[0])
    empty = _play(model, x[0], target[0], segments[0], zeros, [])
    values = torch.stack([_play(model, x[0], target[0], segments[0], zeros,
                                row.nonzero().flatten().tolist()) for row in table]) - empty
    full = _play(model, x[0], target[0], segments[0], zeros, range(10))
    return constrained_least_squares(table, values, torch.ones(len(table), dtype=torch.float64),
                                     float(full - empty))


@pytest.mark.parametrize("paired", [True, False])
def test_kernel_shap_sampled_converges_to_the_exact_values_and_stays_efficient(paired) -> None:
    model, x, target, segments, exact = _cell_game()   # 1022 coalitions, 1000 sampled
    scale = float(exact.abs().max())
    runs = []
    for seed in range(6):
        got = _values(cl.attribute(model, x, "kernel_shap", segmentation="grid", grid=(2, 5),
                                   samples=1000, paired=paired, seed=seed), segments)
        _close(got.sum(1), exact.sum(1))   # efficiency is imposed, whatever the draws
        runs.append(got)
    # measured: the mean of 6 seeds is 0.009 (paired) / 0.007 (unpaired) of the largest value
    # away from exact (one seed: 0.01 to 0.04); the uniform-kernel limit is 0.05 away
    tolerance = 0.025 * scale
    assert float((torch.stack(runs).mean(0) - exact).abs().max()) < tolerance
    assert float((_uniform_kernel_limit(model, x, target, segments) - exact).abs().max()
                 ) > 1.5 * tolerance


def test_shapley_methods_on_different_feature_counts_per_sample() -> None:
    model, x = seeded(TinyVGG()), _x(2)
    target = _targets(model, x)
    segments = torch.stack([grid_segments(16, 16, (1, 3)), grid_segments(16, 16, (2, 2))])
    exact = exact_shapley(model, x, target, segments)
    got = cl.attribute(model, x, "kernel_shap", segments=segments, samples=16)
    _close(_values(got, segments), exact)
    assert float(got[0].abs().sum()) > 0 and torch.equal(_values(got, segments)[0, 3],
                                                         torch.tensor(0.0, dtype=torch.float64))


# ---- a linear model: every method has a closed form --------------------------------------------

@pytest.mark.parametrize("baseline", [0.0, "mean", -1.0])
@pytest.mark.parametrize("method", METHODS)
def test_on_a_linear_model_every_method_gives_the_weights_times_the_change(method, baseline
                                                                           ) -> None:
    """y = w . x + b is additive over any grouping: each feature's Shapley value, its
    leave-one-out drop and (unregularised) LIME coefficient all equal sum w (x - baseline)
    over its pixels, at any number of samples."""
    model = seeded(LinearNet((3, 8, 8)))
    x = _x(2, 8)
    segments = grid_segments(8, 8, (2, 3)).expand(2, 8, 8)
    options = {"shapley_sampling": {"permutations": 3}, "kernel_shap": {"samples": 30},
               "lime": {"samples": 60, "alpha": 0.0}, "feature_ablation": {}}[method]
    got = cl.attribute(model, x, method, target=[1, 2], segmentation="grid", grid=(2, 3),
                       baseline=baseline, **options)
    fill = x.mean((2, 3), keepdim=True) if baseline == "mean" else torch.full_like(x, baseline)
    weights = model.fc.weight[[1, 2]].view(2, 3, 8, 8).detach()
    per_pixel = (weights * (x - fill)).sum(1)
    expected = torch.stack([torch.bincount(segments[i].flatten(), per_pixel[i].flatten())
                            for i in range(2)])
    _close(_values(got, segments), expected)


# ---- LIME and feature ablation: their definitions ----------------------------------------------

def test_lime_is_the_weighted_ridge_fit_on_the_seeded_coalitions() -> None:
    from sklearn.linear_model import Ridge

    model, x, target, segments = _game(2, (2, 3), seeded(TinyVGG()))
    got = cl.attribute(model, x, "lime", segmentation="grid", grid=(2, 3), samples=40, seed=4,
                       kernel_width=0.4, alpha=0.5, batch_size=9)
    generator = torch.Generator().manual_seed(4)
    expected = []
    for i in range(2):
        table = torch.bernoulli(torch.full((40, 6), 0.5), generator=generator).numpy()
        values = [float(_play(model, x[i], target[i], segments[i], torch.zeros_like(x[i]),
                              np.flatnonzero(row).tolist())) for row in table]
        # cosine distance to the all-ones vector, exponential kernel of width 0.4
        ones = np.ones(6)
        cosine = np.array([row @ ones / (np.linalg.norm(row) * np.sqrt(6)) if row.any() else 0.0
                           for row in table])
        weights = np.exp(-(1 - cosine) ** 2 / (2 * 0.4 ** 2))
        fit = Ridge(alpha=0.5).fit(table, values, sample_weight=weights)
        expected.append(torch.from_numpy(fit.coef_))
    _close(_values(got, segments), torch.stack(expected), rtol=1e-4)


def test_feature_ablation_is_the_drop_when_one_feature_is_removed() -> None:
    model, x, target, segments = _game(2, (3, 2))
    baseline = _x(1, seed=5)[0]
    got = cl.attribute(model, x, "feature_ablation", segmentation="grid", grid=(3, 2),
                       baseline=baseline, batch_size=5)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    for i in range(2):
        full = _play(model, x[i], target[i], segments[i], baseline, range(6))
        for k in range(6):
            expected[i, k] = full - _play(model, x[i], target[i], segments[i], baseline,
                                          [j for j in range(6) if j != k])
    _close(_values(got, segments), expected)


# ---- batching and seeds -----------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_results_do_not_depend_on_the_batch_size(method: str) -> None:
    model, x = seeded(TinyVGG()), _x(3)
    options = {"segmentation": "slic", "n_segments": 8}
    options |= {"permutations": 2} if method == "shapley_sampling" else {}
    options |= {"samples": 30} if method in ("kernel_shap", "lime") else {}
    one = cl.attribute(model, x, method, batch_size=1, **options)
    many = cl.attribute(model, x, method, batch_size=1000, **options)
    _close(one, many, rtol=1e-6)


@pytest.mark.parametrize("method", SEEDED)
def test_seeds_reproduce_and_differ(method: str) -> None:
    model, x = seeded(TinyVGG()), _x(1)
    options = {"segmentation": "grid", "grid": 4}
    options |= {"permutations": 2} if method == "shapley_sampling" else {"samples": 30}
    a = cl.attribute(model, x, method, seed=1, **options)
    b = cl.attribute(model, x, method, seed=1, **options)
    c = cl.attribute(model, x, method, seed=2, **options)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---- Captum at the same settings --------------------------------------------------------------

def _captum_values(attribution: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Captum paints each feature's value on all its pixels: read it off one pixel each."""
    n = segments.shape[0]
    out = torch.zeros(n, int(segments.max()) + 1, dtype=torch.float64)
    flat = attribution[:, 0].reshape(n, -1).double()
    for i in range(n):
        for k in torch.unique(segments[i]).tolist():
            pixels = flat[i][segments[i].flatten() == k]
            assert torch.allclose(pixels, pixels[0].expand_as(pixels))
            out[i, k] = pixels[0]
    return out


@pytest.mark.parametrize(("segmentation", "n"), [("slic", 1), ("grid", 2)])
def test_shapley_sampling_matches_captum_with_the_same_orderings(segmentation, n) -> None:
    captum = pytest.importorskip("captum.attr")
    model, x = seeded(TinyVGG()), _x(n, 24)
    target = _targets(model, x).tolist()
    options = {"n_segments": 12} if segmentation == "slic" else {"grid": 3}
    segments = segment(x, segmentation, **options)
    got = cl.attribute(model, x, "shapley_sampling", target=target, segmentation=segmentation,
                       permutations=6, seed=7, baseline=0.25, **options)
    torch.manual_seed(7)
    expected = captum.ShapleyValueSampling(model).attribute(
        x, baselines=0.25, target=target, feature_mask=segments.unsqueeze(1), n_samples=6,
        perturbations_per_eval=8)
    _close(_values(got, segments), _captum_values(expected, segments))


def test_shapley_sampling_matches_captum_when_feature_counts_differ() -> None:
    captum = pytest.importorskip("captum.attr")
    model, x = seeded(TinyResNet()), _x(2)
    segments = torch.stack([grid_segments(16, 16, (1, 3)), grid_segments(16, 16, (2, 3))])
    got = cl.attribute(model, x, "shapley_sampling", target=[0, 3], segments=segments,
                       permutations=4, seed=2)
    torch.manual_seed(2)
    expected = captum.ShapleyValueSampling(model).attribute(
        x, target=[0, 3], feature_mask=segments.unsqueeze(1), n_samples=4)
    _close(_values(got, segments), _captum_values(expected, segments))


@pytest.mark.parametrize(("segmentation", "options"), [("grid", {"grid": (2, 3)}),
                                                    ("slic", {"n_segments": 10})])
def test_lime_matches_captum_with_the_same_coalitions_and_fit(segmentation, options) -> None:
    """One image: for a batch, Captum's DataLoader takes a draw from the global generator
    between examples, so its later examples see other coalitions than ours."""
    captum = pytest.importorskip("captum.attr")
    from captum._utils.models.linear_model import SkLearnRidge

    model, x = seeded(TinyVGG()), _x(1, 24)
    target = _targets(model, x).tolist()
    segments = segment(x, segmentation, **options)

    def kernel(_original, _perturbed, interpretable, **_):   # ours, on the binary vector
        z = interpretable.double().flatten()
        distance = 1 - z.sum().sqrt() / math.sqrt(z.numel())
        return torch.exp(-distance ** 2 / (2 * 0.3 ** 2))

    got = cl.attribute(model, x, "lime", target=target, segmentation=segmentation,
                       samples=50, seed=11, kernel_width=0.3, alpha=0.1, **options)
    torch.manual_seed(11)
    expected = captum.Lime(model, interpretable_model=SkLearnRidge(alpha=0.1),
                           similarity_func=kernel).attribute(
        x, target=target, feature_mask=segments.unsqueeze(1), n_samples=50,
        perturbations_per_eval=16)
    # Captum fits in float32; our fit is float64
    _close(_values(got, segments), _captum_values(expected, segments), rtol=1e-4)


def test_feature_ablation_matches_captum() -> None:
    captum = pytest.importorskip("captum.attr")
    model, x = seeded(TinyResNet()), _x(2, 24)
    segments = segment(x, "slic", n_segments=15)
    got = cl.attribute(model, x, "feature_ablation", target=[1, 4], n_segments=15,
                       baseline=-0.3)
    expected = captum.FeatureAblation(model).attribute(
        x, baselines=-0.3, target=[1, 4], feature_mask=segments.unsqueeze(1),
        perturbations_per_eval=10)
    _close(_values(got, segments), _captum_values(expected, segments))


def test_kernel_shap_agrees_with_captum_statistically() -> None:
    """Captum's KernelShap draws coalitions differently and fits without the exact
    constraints (weight 1e6 on the ends), so only the limits can agree: both near the
    exact Shapley values, and near each other."""
    captum = pytest.importorskip("captum.attr")
    model, x, target, segments, exact = _cell_game()
    ours = torch.stack([_values(cl.attribute(model, x, "kernel_shap", segmentation="grid",
                                             grid=(2, 5), samples=1000, seed=seed), segments)
                        for seed in range(6)]).mean(0)
    torch.manual_seed(0)
    theirs = _captum_values(captum.KernelShap(model).attribute(
        x, target=target.tolist(), feature_mask=segments.unsqueeze(1), n_samples=3000,
        perturbations_per_eval=500), segments)
    scale = float(exact.abs().max())
    # measured: ours 0.009, Captum's (3000 samples, seeds 0-2) 0.013 to 0.018 from exact
    assert float((theirs - exact).abs().max()) < 0.035 * scale
    assert float((ours - theirs).abs().max()) < 0.035 * scale


@pytest.mark.parametrize("method", METHODS)
def test_maps_present_through_explain(method: str) -> None:
    from PIL import Image

    model = seeded(TinyVGG(), dtype=torch.float32)
    classifier = cl.Classifier(model, labels=[f"c{i}" for i in range(5)], input_size=16,
                               device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8))
    options = {"segmentation": "grid", "grid": 4}
    options |= {"permutations": 2} if method == "shapley_sampling" else {}
    options |= {"samples": 30} if method in ("kernel_shap", "lime") else {}
    (explanation,) = cl.explain(classifier, [image], [method], **options)
    heatmap = explanation.heatmap(method)
    assert heatmap.shape == (20, 24)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
