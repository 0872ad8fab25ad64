"""Which class each attribution explains.

A target may be ``None`` (each sample's own prediction), one class index for the whole
batch, one index per sample (list or tensor), a class name (when labels are known), or a
list of names. Resolution happens on the logits of the unperturbed input, so a method that
runs many noisy or masked copies still explains the class predicted for the real image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convlens.errors import TargetError

TargetLike = None | int | str | Sequence[int | str] | torch.Tensor


def _name_to_index(name: str, labels: Sequence[str] | None) -> int:
    if labels is None:
        raise TargetError(
            f"target {name!r} is a class name but the model has no labels; pass an index, or "
            "wrap the model in a Classifier with labels (convlens.Classifier(model, labels=...))"
        )
    for index, label in enumerate(labels):
        if label == name:
            return index
    lowered = name.strip().lower()
    matches = [i for i, label in enumerate(labels) if label.lower() == lowered]
    if len(matches) == 1:
        return matches[0]
    close = [label for label in labels if lowered in label.lower()][:10]
    hint = f"; similar: {', '.join(close)}" if close else ""
    raise TargetError(f"unknown class {name!r}{hint} ({len(labels)} classes in all)")


def _one_index(item: object, labels: Sequence[str] | None) -> int:
    if isinstance(item, str):
        if item.strip().lstrip("-").isdigit():
            return int(item)
        return _name_to_index(item, labels)
    if isinstance(item, bool) or not isinstance(item, int):
        if isinstance(item, torch.Tensor) and item.numel() == 1 and not item.is_floating_point():
            return int(item.item())
        raise TargetError(
            f"a target must be an int class index or a class name, got {type(item).__name__}"
        )
    return item


def resolve_targets(target: TargetLike, logits: torch.Tensor,
                    labels: Sequence[str] | None = None) -> torch.Tensor:
    """Turn a user's ``target`` into one class index per sample.

    Args:
        target: See the module docstring.
        logits: The model's output on the unperturbed batch, shape ``(N, classes)``.
        labels: Class names, when known, to accept names as targets.

    Returns:
        A ``long`` tensor of shape ``(N,)`` on ``logits``' device.

    Raises:
        TargetError: on an index out of range, an unknown name or a wrong count.
    """
    if logits.dim() != 2:
        raise TargetError(
            f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}; "
            "wrap it so that forward returns one score per class"
        )
    n, classes = logits.shape
    if target is None:
        # In range by construction: no range check, so no device sync.
        return logits.argmax(dim=1)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dim() > 1:
            raise TargetError(
                f"a target tensor must hold integer class indices, shape (N,), got dtype "
                f"{target.dtype} and shape {tuple(target.shape)}"
            )
        indices = target.to(device=logits.device, dtype=torch.long).reshape(-1)
        if indices.numel() == 1:
            indices = indices.expand(n)
    elif isinstance(target, (int, str)):
        index = _one_index(target, labels)
        _check_range([index], classes)  # on the Python ints: no device sync
        indices = torch.full((n,), index, dtype=torch.long, device=logits.device)
    elif isinstance(target, Sequence):
        chosen = [_one_index(t, labels) for t in target]
        _check_range(chosen, classes)
        indices = torch.tensor(chosen, dtype=torch.long, device=logits.device)
    else:
        raise TargetError(
            "target must be None (the prediction), an int, a class name, or one per sample "
            f"(list or tensor); got {type(target).__name__}"
        )
    if indices.numel() != n:
        raise TargetError(f"got {indices.numel()} targets for a batch of {n} samples; "
                          "give one target, or exactly one per sample")
    if isinstance(target, torch.Tensor):  # only a tensor target needs a check on the device
        bad = (indices < 0) | (indices >= classes)
        if bool(bad.any()):
            _check_range([int(indices[bad][0])], classes)
    return indices.contiguous()


def _check_range(indices: Sequence[int], classes: int) -> None:
    for index in indices:
        if not 0 <= index < classes:
            raise TargetError(
                f"target class {index} is out of range: the model has {classes} "
                f"classes (valid indices 0..{classes - 1})"
            )


def target_scores(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The target class's logit for each sample, shape ``(N,)``."""
    return logits.gather(1, indices.view(-1, 1)).squeeze(1)
