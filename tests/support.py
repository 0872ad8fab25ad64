"""Helpers shared by tests in every folder: fast method options, float64 comparisons, model
snapshots. (Imported as ``support``: a module named ``conftest`` would be ambiguous, since
several folders have a conftest.py.)"""

from __future__ import annotations

import torch
from torch import nn

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


