"""Registry-driven conformance: every method leaves no trace and keeps the output contract.

A newly registered method is tested here without any change to this file.
"""

from __future__ import annotations

import pytest
import torch
from support import FAST_OPTIONS, Snapshot
from tiny_models import RaisingNet, TinyResNet, TinyVGG, seeded

import convlens as cl
from convlens.errors import ConvlensError, TargetError

METHODS = [m.name for m in cl.methods()]
MODELS = {"vgg": lambda: seeded(TinyVGG(), dtype=torch.float32),
          "resnet": lambda: seeded(TinyResNet(), dtype=torch.float32)}


def _input(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _check_contract(method: str, x: torch.Tensor, result: torch.Tensor) -> None:
    spec = cl.get_method(method)
    assert result.dtype == torch.float32
    assert result.device == x.device
    assert bool(torch.isfinite(result).all()), "NaN or inf in the attribution"
    if spec.space == "input":
        assert result.shape[0] == x.shape[0] and result.shape[2:] == x.shape[2:]
        assert result.shape[1] in (1, x.shape[1])
    elif spec.space == "concepts":  # one input-sized map per concept (channel)
        assert result.dim() == 4 and result.shape[0] == x.shape[0]
        assert result.shape[2:] == x.shape[2:]
    else:
        assert result.dim() == 4 and result.shape[:2] == (x.shape[0], 1)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_normal_run_leaves_no_trace(method: str, model_name: str) -> None:
    model = MODELS[model_name]()
    model.train()  # BatchNorm statistics must not move, flags must come back as they were
    model.layer1.bn1.eval() if model_name == "resnet" else None
    x = _input()
    snap = Snapshot(model)
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    model.layer1.bn1.eval() if model_name == "resnet" else None
    snap = Snapshot(model)
    result = cl.attribute(model, x, method, **FAST_OPTIONS.get(method, {}))
    snap.assert_unchanged()
    _check_contract(method, x, result)
    assert x.grad is None
    with torch.no_grad():
        after = model.eval()(x)
    assert torch.equal(before, after)


@pytest.mark.parametrize("method", METHODS)
def test_works_inside_no_grad_and_inference_mode(method: str) -> None:
    model = MODELS["vgg"]()
    x = _input(1)
    expected = cl.attribute(model, x, method, target=1, **FAST_OPTIONS.get(method, {}))
    with torch.no_grad():
        got = cl.attribute(model, x, method, target=1, **FAST_OPTIONS.get(method, {}))
    torch.testing.assert_close(got, expected)
    with torch.inference_mode():
        got = cl.attribute(model, x, method, target=1, **FAST_OPTIONS.get(method, {}))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", METHODS)
def test_bad_target_leaves_no_trace(method: str) -> None:
    model = MODELS["resnet"]()
    snap = Snapshot(model)
    with pytest.raises(TargetError, match="out of range"):
        cl.attribute(model, _input(), method, target=99, **FAST_OPTIONS.get(method, {}))
    snap.assert_unchanged()


@pytest.mark.parametrize("method", METHODS)
def test_model_that_raises_leaves_no_trace(method: str) -> None:
    model = RaisingNet()
    snap = Snapshot(model)
    layer = {"layer": "conv"} if cl.get_method(method).needs_layer else {}
    with pytest.raises((ConvlensError, RuntimeError)):
        cl.attribute(model, _input(), method, target=0, **layer,
                     **FAST_OPTIONS.get(method, {}))
    snap.assert_unchanged()


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_is_refused_with_the_valid_ones(method: str) -> None:
    with pytest.raises(cl.ConvlensError, match="has no option 'bogus'"):
        cl.attribute(MODELS["vgg"](), _input(1), method, bogus=1)


def test_every_method_documents_itself() -> None:
    for method in cl.methods():
        assert method.family in ("gradient", "cam", "perturbation", "relevance")
        assert method.reference and method.summary
        assert method.space in ("input", "layer", "concepts")
