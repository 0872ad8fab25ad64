"""P-ClArC's projection: its closed form, the names it keeps, and every method explaining it."""

from __future__ import annotations

import pytest
import torch
from support import FAST_OPTIONS
from tiny_models import TinyResNet, TinyVGG, seeded

import convlens as cl
from convlens.errors import ConvlensError
from convlens.models.projection import ConceptProjection, insert_projection


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_the_projection_moves_the_component_along_the_direction_to_the_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    v, z = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    h = torch.randn(4, 8, 5, 5, generator=gen, dtype=torch.float64)
    out = ConceptProjection(v, z).double()(h)
    unit = (v / v.norm()).double().view(1, 8, 1, 1)
    along = (out * unit).sum(1)
    torch.testing.assert_close(along, (z.double().view(1, 8, 1, 1) * unit).sum(1).expand_as(along))
    across = h - (h * unit).sum(1, keepdim=True) * unit  # untouched across the direction
    torch.testing.assert_close(out - (out * unit).sum(1, keepdim=True) * unit, across)


def test_a_whole_map_direction_projects_the_flattened_output() -> None:
    gen = torch.Generator().manual_seed(2)
    v, z = torch.randn(4, 3, 3, generator=gen), torch.randn(4, 3, 3, generator=gen)
    h = torch.randn(5, 4, 3, 3, generator=gen)
    out = ConceptProjection(v, z)(h).flatten(1)
    unit = (v / v.norm()).flatten()
    torch.testing.assert_close(out @ unit, (z.flatten() @ unit).expand(5), rtol=1e-5,
                               atol=1e-5)


def test_insertion_keeps_every_name_and_leaves_the_model_alone(snapshot) -> None:
    model = seeded(TinyVGG(), dtype=torch.float32)
    watch = snapshot(model)
    names = [n for n, _ in model.named_modules()]
    fixed = insert_projection(model, "features.6", torch.ones(16), torch.zeros(16))
    watch.assert_unchanged()
    fixed_names = [n for n, _ in fixed.named_modules()]
    assert set(names) <= set(fixed_names)
    assert {"features.6.layer", "features.6.projection"} <= set(fixed_names)
    assert "features.6.projection.direction" in fixed.state_dict()
    x = _x()
    with torch.no_grad():  # the projection changes the output
        assert not torch.equal(model(x), fixed(x))


@pytest.mark.parametrize("method", [m.name for m in cl.methods()])
@pytest.mark.parametrize("network", ["vgg", "resnet"])
def test_every_method_explains_a_corrected_model(method: str, network: str) -> None:
    model = seeded(TinyVGG() if network == "vgg" else TinyResNet(), dtype=torch.float32)
    layer = "features.6" if network == "vgg" else "layer1"
    channels = 16 if network == "vgg" else 8
    gen = torch.Generator().manual_seed(3)
    fixed = insert_projection(model, layer, torch.randn(channels, generator=gen),
                              torch.rand(channels, generator=gen))
    result = cl.attribute(fixed, _x(2), method, **FAST_OPTIONS.get(method, {}))
    assert bool(torch.isfinite(result).all())


@pytest.mark.parametrize("direction, reference, message", [
    (torch.zeros(16), torch.zeros(16), "zero or not finite"),
    (torch.ones(16), torch.zeros(8), "must have the direction's shape"),
    (torch.ones(2, 16), torch.zeros(2, 16), r"\(C,\) or \(C, H, W\)"),
])
def test_a_bad_direction_is_one_clear_error(direction, reference, message) -> None:
    with pytest.raises(ConvlensError, match=message):
        insert_projection(seeded(TinyVGG(), dtype=torch.float32), "features.6", direction,
                          reference)


def test_a_direction_of_the_wrong_width_is_refused_when_the_model_runs() -> None:
    fixed = insert_projection(seeded(TinyVGG(), dtype=torch.float32), "features.6",
                              torch.ones(5), torch.zeros(5))
    with pytest.raises(ConvlensError, match="5 channels"):
        fixed(_x(1))
