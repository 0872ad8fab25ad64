"""Deletion and insertion against a float64 reference written from the RISE paper's code,
closed forms on a linear model, Quantus's pixel flipping, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, TinyResNet, TinyVGG, seeded
from torch import nn

import convlens.metrics as M
from convlens.errors import InputShapeError
from convlens.metrics.core import CONSTANT, MetricError
from convlens.metrics.deletion_insertion import blur, gaussian_kernel


def rise_reference(model: nn.Module, img: torch.Tensor, explanation: np.ndarray, mode: str,
                   step: int, klen: int = 11, ksig: float = 5.0) -> tuple[np.ndarray, float]:
    """Petsiuk et al.'s ``CausalMetric.single_run`` (evaluation.py), float64, one image.

    Substrate: zeros (deletion) or ``conv2d(img, gkern(klen, ksig), padding=klen // 2)``
    (insertion); score: softmax probability of the top-1 class; ``auc`` as theirs.
    """
    from scipy.ndimage import gaussian_filter

    hw = img.shape[-1] * img.shape[-2]
    n_steps = (hw + step - 1) // step
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, ksig)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    blurred = torch.nn.functional.conv2d(img, torch.from_numpy(kern), padding=klen // 2)
    with torch.no_grad():
        top = int(torch.softmax(model(img), 1).argmax())
    if mode == "del":
        start, finish = img.clone(), torch.zeros_like(img)
    else:
        start, finish = blurred.clone(), img.clone()
    scores = np.empty(n_steps + 1)
    # Their salient order, with ties broken like ours (stable descending) instead of flipped.
    salient_order = np.argsort(-explanation.reshape(-1, hw), axis=1, kind="stable")
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = float(torch.softmax(model(start), 1)[0, top])
        if i < n_steps:
            coords = salient_order[:, step * i: step * (i + 1)]
            s = start.numpy().reshape(1, 3, hw)
            s[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    auc = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)
    return scores, auc


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
@pytest.mark.parametrize("step", [16, 23])  # 23: the last step is partial
def test_matches_the_float64_reference_of_the_rise_code(kind: str, step: int) -> None:
    torch.manual_seed(0)
    net = seeded(TinyResNet(classes=5), 0, torch.float64)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    maps = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    fn = M.deletion if kind == "deletion" else M.insertion
    got = fn(net, x, maps, step=step, batch_size=7)  # chunks cut across images
    for i in range(3):
        curve, auc = rise_reference(net, x[i:i + 1].clone(), maps[i].numpy(),
                                    "del" if kind == "deletion" else "ins", step)
        np.testing.assert_allclose(got.curves[kind][i], curve, rtol=1e-10, atol=1e-12)
        assert got.values[i] == pytest.approx(auc, rel=1e-10)
    assert got.curves[kind].shape[1] == math.ceil(256 / step) + 1
    assert got.curve_x[0] == 0 and got.curve_x[-1] == 1


def test_rise_preset_is_the_default_with_225_points_at_224_px() -> None:
    spec = M.get_metric("deletion")
    assert spec.bind(preset="rise") == spec.bind()
    assert M.get_metric("insertion").bind()["substrate"] == "blur"
    net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))
    got = M.deletion(net, torch.randn(1, 3, 224, 224), torch.rand(1, 224, 224), batch_size=128)
    assert got.curves["deletion"].shape == (1, 225)
    assert M.deletion(net, torch.randn(1, 3, 224, 224), torch.rand(1, 224, 224),
                      **spec.presets["xplique"]).curves["deletion"].shape == (1, 11)


@pytest.mark.parametrize(("size", "sigma"), [(11, 5.0), (5, 1.0), (9, 3.0)])
def test_blur_kernel_is_the_reference_gkern(size: int, sigma: float) -> None:
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    np.testing.assert_allclose(gaussian_kernel(size, sigma), gaussian_filter(delta, sigma),
                               atol=1e-15)
    k = gaussian_kernel(11, 5.0)
    assert k.shape == (11, 11) and k.sum() == pytest.approx(1.0)
    x = torch.zeros(1, 3, 21, 21, dtype=torch.float64)
    x[0, :, 10, 10] = 1.0
    np.testing.assert_allclose(blur(x)[0, 1, 5:16, 5:16].numpy(), k, rtol=1e-12)


def _linear_case(seed: int = 0):
    net = seeded(LinearNet((3, 6, 6), 4), seed, torch.float64)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    cls = net(x).argmax(1)
    exact = net.fc.weight[cls].view(5, 3, 6, 6) * x
    return net, x, cls, exact


def test_exact_linear_attribution_deletes_fastest_and_inserts_fastest() -> None:
    """On logits, y(S kept) = b + sum_S w x: greedy order by w * x is optimal at every step."""
    net, x, cls, exact = _linear_case()
    common = dict(step=3, output="logit")
    best_del = M.deletion(net, x, exact, **common).values
    best_ins = M.insertion(net, x, exact, substrate="zeros", **common).values
    generator = torch.Generator().manual_seed(1)
    others = [torch.rand(5, 1, 6, 6, generator=generator, dtype=torch.float64)
              for _ in range(30)]
    others += [x, -exact, exact.abs(), net.fc.weight[cls].view(5, 3, 6, 6)]
    for other in others:
        assert (best_del <= M.deletion(net, x, other, **common).values + 1e-12).all()
        assert (best_ins >= M.insertion(net, x, other, substrate="zeros", **common).values
                - 1e-12).all()
    # And strictly better than reversing the order (the test can fail).
    assert (best_del < M.deletion(net, x, -exact, **common).values).all()


def test_random_maps_score_near_chance() -> None:
    """A random order removes, on average, a fraction k of sum(w x) at step k: the area is
    b + sum(w x) / 2 for deletion to zeros on logits."""
    net, x, cls, exact = _linear_case(3)
    logits = net(x).gather(1, cls[:, None]).squeeze(1)
    bias = net.fc.bias[cls]
    chance = (bias + (logits - bias) / 2).detach().numpy()
    generator = torch.Generator().manual_seed(2)
    areas = np.mean([M.deletion(net, x, torch.rand(5, 6, 6, generator=generator,
                                                    dtype=torch.float64), step=1,
                                output="logit").values for _ in range(300)], axis=0)
    spread = (logits - bias).abs().detach().numpy()
    np.testing.assert_allclose(areas, chance, atol=0.05 * spread.max())


def test_constant_map_is_reported_as_such() -> None:
    net, x, _, _ = _linear_case()
    got = M.deletion(net, x, torch.ones(5, 1, 6, 6), step=6)
    assert got.undefined == [CONSTANT] * 5
    assert got.mean is None and np.isnan(got.values).all()


def test_agrees_with_quantus_pixel_flipping_when_all_channels_flip_together() -> None:
    """Quantus flips single channel elements (it broadcasts the map to (N, C, H, W) and sorts
    C x H x W values), a deviation from the paper's pixels. With a map equal across channels,
    ``features_in_step = C * step`` flips whole pixels: then the curves match (Quantus omits
    the unperturbed first point; it also insists that its step divide H x W, not C x H x W)."""
    quantus = pytest.importorskip("quantus")
    net = seeded(TinyVGG(classes=4), 0, torch.float32)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 12, 12, generator=generator)
    maps = torch.rand(3, 1, 12, 12, generator=generator)
    y = net(x).argmax(1)
    ours = M.deletion(net, x, maps, step=16)
    metric = quantus.PixelFlipping(features_in_step=3 * 16, perturb_baseline=0.0,
                                   disable_warnings=True)
    theirs = np.asarray(metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(),
                               a_batch=maps.numpy(), device="cpu", softmax=True))
    np.testing.assert_allclose(ours.curves["deletion"][:, 1:], theirs, rtol=1e-5, atol=1e-6)


def test_bad_input_gets_one_clear_error() -> None:
    net, x, _, exact = _linear_case()
    with pytest.raises(InputShapeError, match=r"do not fit images of shape \(5, 3, 6, 6\)"):
        M.deletion(net, x, torch.rand(4, 1, 6, 6))
    with pytest.raises(InputShapeError, match="do not fit"):
        M.deletion(net, x, torch.rand(5, 1, 7, 7))
    with pytest.raises(InputShapeError, match="have 2 channels"):
        M.deletion(net, x, torch.rand(5, 2, 6, 6))
    with pytest.raises(MetricError, match="has no option 'stepz'; its options are: step=224"):
        M.get_metric("deletion").bind({"stepz": 3})
    with pytest.raises(MetricError, match="no preset 'foo'; its presets are: rise, xplique"):
        M.get_metric("deletion").bind(preset="foo")
    with pytest.raises(MetricError, match="substrate="):
        M.deletion(net, x, exact, substrate="grey")
    with pytest.raises(MetricError, match="exactly one of step"):
        M.deletion(net, x, exact, step=3, steps=4)

    class NaNNet(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            out = inputs.flatten(1)[:, :3]
            return torch.where(inputs.flatten(1)[:, :1] == 0, torch.nan, out)

    with pytest.raises(MetricError, match="NaN or infinite"):
        M.deletion(NaNNet(), x, exact, step=6)


def test_model_is_left_as_found(snapshot) -> None:
    net = seeded(TinyResNet(), 0, torch.float32).train()
    before = snapshot(net)
    M.insertion(net, torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16), step=32)
    before.assert_unchanged()


def test_layer_maps_are_upsampled() -> None:
    net, x, _, _ = _linear_case()
    small = torch.rand(5, 1, 3, 3)
    got = M.deletion(net, x, small, step=6)
    up = torch.nn.functional.interpolate(small, size=(6, 6), mode="bilinear",
                                         align_corners=False)
    np.testing.assert_allclose(got.values, M.deletion(net, x, up, step=6).values)


class _BatchRecorder(nn.Module):
    """A tiny classifier that notes the batch size of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize("name", ["deletion", "insertion", "faithfulness_correlation",
                                  "mufidelity"])
def test_default_batch_is_chosen_by_device(name: str) -> None:
    """Issue 9.14: on a CPU a batch of 64 cost 2-3x more per image than a small one."""
    from convlens.metrics.core import CPU_BATCH_SIZE, default_batch_size

    assert M.get_metric(name).bind()["batch_size"] is None  # recorded as "by device"
    assert default_batch_size("cpu") == CPU_BATCH_SIZE < 64
    assert default_batch_size(torch.device("cuda", 0)) == 64  # no GPU needed to ask
    torch.manual_seed(0)
    net = seeded(_BatchRecorder(), 0, torch.float32).eval()
    x, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    fn = M.get_metric(name).compute
    options = {"step": 4} if name in ("deletion", "insertion") else {}
    got = fn(net, x, maps, **options)
    perturbed = net.sizes[1:]  # the first forward reads the predicted classes
    assert len(perturbed) > 8 and max(perturbed) == CPU_BATCH_SIZE
    net.sizes.clear()
    large = fn(net, x, maps, batch_size=64, **options)
    assert max(net.sizes) == 64
    np.testing.assert_allclose(got.values, large.values, rtol=1e-5, atol=1e-6)
