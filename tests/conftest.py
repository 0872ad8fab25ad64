"""Shared fixtures: model snapshots for hygiene checks, small fast options per method."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")
# One thread per xdist worker (two workers on two cores), two when run serially.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# Options that keep n-pass methods fast on the tiny test models. A method missing here runs
# with its registry defaults (fine on 16x16 inputs).
FAST_OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 4},
    "vargrad": {"samples": 4},
    "gradient_shap": {"samples": 4},
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"masks": 16},
    "shapley_sampling": {"permutations": 2, "n_segments": 8},
    "kernel_shap": {"samples": 16, "n_segments": 8},
    "lime": {"samples": 16, "n_segments": 8},
    "feature_ablation": {"n_segments": 8},
}

def assert_close_to_reference(got: torch.Tensor, expected: torch.Tensor,
                              rtol: float = 1e-5) -> None:
    """float32 results against float64 references, with tolerance relative to the map's scale."""
    expected = expected.to(torch.float64)
    atol = rtol * float(expected.abs().max())
    torch.testing.assert_close(got.to(torch.float64), expected, rtol=rtol, atol=atol)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")


class Snapshot:
    """Everything about a model that a convlens call must leave as it found it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        self.training = {name: m.training for name, m in model.named_modules()}
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.grads = {name: p.grad for name, p in model.named_parameters()}
        self.attributes = {name: set(vars(m)) for name, m in model.named_modules()}
        self.modules = {name: type(m) for name, m in model.named_modules()}

    def assert_unchanged(self) -> None:
        model = self.model
        for name, module in model.named_modules():
            for attr in HOOK_DICTS:
                hooks = getattr(module, attr, None)
                assert not hooks, f"{attr} left on {name or 'model'}: {hooks}"
        state = model.state_dict(keep_vars=True)
        assert state.keys() == self.state.keys()
        for key, value in state.items():
            assert torch.equal(value.detach(), self.state[key]), f"{key} changed"
        assert {n: m.training for n, m in model.named_modules()} == self.training
        assert {n: p.requires_grad for n, p in model.named_parameters()} == self.requires_grad
        for name, param in model.named_parameters():
            assert param.grad is self.grads[name], f"gradient accumulated on {name}"
        assert {n: set(vars(m)) for n, m in model.named_modules()} == self.attributes
        assert {n: type(m) for n, m in model.named_modules()} == self.modules


@pytest.fixture
def snapshot():
    return Snapshot
