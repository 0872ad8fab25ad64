"""A model's fingerprint: one hash of its weights, labels and preprocessing.

Stores (the audit's, the reference sets') record it in their configuration, so a results
folder is never silently reused for another model. It lives with the models, below the
audit and the concepts that both use it (docs/architecture.md, "Layers and the direction
data flows").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["model_fingerprint"]


def model_fingerprint(module: nn.Module, labels: Sequence[str] | None, preprocessing: Any) -> str:
    """SHA-256 (16 hex digits) of every parameter and buffer, the labels and the preprocessing.

    A different network, other weights, other labels or other preprocessing give another
    fingerprint, so a results folder is never silently reused for a different model.

    Example:
        >>> model_fingerprint(torch.nn.Linear(2, 2), ["a", "b"], None)  # doctest: +SKIP
        '3f0c...'
    """
    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(name.encode())
        data = tensor.detach().cpu().contiguous()
        hasher.update(str((data.dtype, tuple(data.shape))).encode())
        hasher.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    hasher.update(repr(list(labels) if labels is not None else None).encode())
    hasher.update(repr(preprocessing).encode())
    return hasher.hexdigest()[:16]
