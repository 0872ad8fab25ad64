"""The per-call work made cheap (issue "convlens 4") still does its job."""

from __future__ import annotations

import pytest
import torch
from support import Snapshot
from tiny_models import TinyResNet, TinyVGG, seeded
from torch import nn

import convlens as cl
from convlens._hooks import _training_modules, evaluation_mode
from convlens.errors import InputShapeError, TargetError


def test_training_modules_are_those_of_modules_with_shared_and_none_children() -> None:
    model = seeded(TinyResNet()).train()
    shared = nn.ReLU()
    model.extra = nn.Sequential(shared, shared)
    model.register_module("empty", None)
    model.layer1.eval()
    expected = {id(m) for m in model.modules() if m.training}
    got = _training_modules(model)
    assert {id(m) for m in got} == expected and len(got) == len(expected)
    with evaluation_mode(model):
        assert not any(m.training for m in model.modules())
    assert {id(m) for m in model.modules() if m.training} == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_refused(value: float) -> None:
    x = torch.randn(2, 3, 16, 16)
    x[1, 2, 3, 4] = value
    with pytest.raises(InputShapeError, match="NaN or infinite"):
        cl.attribute(seeded(TinyVGG()), x, "saliency")


def test_huge_finite_input_whose_sum_overflows_is_accepted() -> None:
    x = torch.full((1, 3, 16, 16), 3e38)  # the sum overflows to inf; every value is finite
    assert not torch.isfinite(x.sum())
    model = seeded(TinyVGG(), dtype=torch.float32)
    cl.attribute(model, x, "saliency", target=0)  # no InputShapeError


def test_the_callers_tensor_is_untouched_and_not_the_result() -> None:
    model = seeded(TinyVGG(), dtype=torch.float32)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    before = x.detach().clone()
    snap = Snapshot(model)
    r = cl.attribute(model, x, "input_x_gradient")
    snap.assert_unchanged()
    assert torch.equal(x.detach(), before) and x.grad is None and x.requires_grad
    assert r.data_ptr() != x.data_ptr()


def test_inference_mode_input_is_accepted() -> None:
    model = seeded(TinyVGG(), dtype=torch.float32)
    with torch.inference_mode():
        x = torch.randn(1, 3, 16, 16)
    expected = cl.attribute(model, x.clone(), "saliency", target=1)
    torch.testing.assert_close(cl.attribute(model, x, "saliency", target=1), expected)


@pytest.mark.parametrize("target", [10, -1, [0, 10], torch.tensor([0, 10]), "10"])
def test_out_of_range_targets_are_refused_without_the_device_check(target) -> None:
    model = seeded(TinyVGG(), dtype=torch.float32)  # 10 classes
    with pytest.raises(TargetError, match="out of range"):
        cl.attribute(model, torch.randn(2, 3, 16, 16), "saliency", target=target)
