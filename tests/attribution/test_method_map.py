"""One map reduction: every consumer of a method's raw output reads it through ``Method.to_map``.

Registry-driven, as the hygiene test: a newly registered method is checked here without any
change to this file. The consumers are presentation (the shown maps), the audit's stored maps
(``downsize``), the metrics' 2-D maps (``two_d_maps``) and the randomisation tests
(``presentation_maps``); each must give exactly (bit for bit) the method's own map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import FAST_OPTIONS
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.attribution.registry import register
from convlens.auditing.passes import downsize
from convlens.explanations import _shown_maps
from convlens.metrics.evaluate import two_d_maps
from convlens.metrics.randomisation import presentation_maps

SIZE = (16, 16)
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _raw(method: str) -> torch.Tensor:
    model = seeded(TinyVGG(), dtype=torch.float32)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    return cl.attribute(model, x, method, target=1, **FAST_OPTIONS.get(method, {}))


def _assert_consumers_agree(spec: cl.Method, raw: torch.Tensor) -> None:
    own = spec.to_map(raw)
    assert own.shape == (raw.shape[0], *raw.shape[-2:])
    assert torch.equal(_shown_maps(raw, spec, "all"), own)
    assert torch.equal(two_d_maps(spec.name, raw)[:, 0], own)
    assert torch.equal(presentation_maps(spec.name, raw, SIZE, absolute=False),
                       spec.to_map(raw.double(), SIZE))
    stored = spec.to_map(raw.float(), SIZE).clamp(-FLOAT16_MAX, FLOAT16_MAX)
    np.testing.assert_array_equal(downsize(raw, spec, SIZE[0]), stored.numpy().astype(np.float16))


@pytest.mark.parametrize("method", [m.name for m in cl.methods()])
def test_every_consumer_reads_the_methods_own_map(method: str) -> None:
    spec = cl.get_method(method)
    raw = _raw(method)
    _assert_consumers_agree(spec, raw)
    if spec.space == "input":  # a grey-scale model's map: one input channel
        _assert_consumers_agree(spec, raw[:, :1])


def test_a_one_channel_map_is_reduced_like_any_other():
    """The audit stored a 1-channel ``max_abs`` map signed, where presentation and the
    metrics show its magnitude (a grey-scale model's guided backprop clustered on signs)."""
    raw = torch.tensor([[[[-2.0, 1.0], [0.5, -0.25]]]])
    spec = cl.get_method("guided_backprop")
    assert spec.channel_reduction == "max_abs"
    np.testing.assert_array_equal(downsize(raw, spec, 2)[0], [[2.0, 1.0], [0.5, 0.25]])


def test_rises_offset_does_not_change_its_randomisation_scores():
    """RISE's maps carry an arbitrary offset (the mean class probability) that presentation
    removes; the randomisation tests compared maps with it, so SSIM scored the offset."""
    model = seeded(TinyVGG(), dtype=torch.float32)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    raw = cl.attribute(model, x, "rise", **FAST_OPTIONS["rise"])  # the predicted class
    assert float(raw.min()) > 0.5  # the offset is there
    for metric in (cl.metrics.random_logit, cl.metrics.model_randomisation):
        kwargs = dict(similarity="ssim", method_options=FAST_OPTIONS["rise"])
        plain = metric(model, x, "rise", maps=raw, **kwargs).values
        shifted = metric(model, x, "rise", maps=raw + 1.0, **kwargs).values
        np.testing.assert_allclose(shifted, plain, atol=1e-4)


def test_a_registration_with_an_unknown_channel_reduction_is_refused():
    with pytest.raises(ValueError, match="channel_reduction must be one of"):
        register("toy_mean", family="gradient", reference="-", summary="-",
                 channel_reduction="mean")
    assert "toy_mean" not in [m.name for m in cl.methods()]
