"""Which class each attribution explains.

A target may be ``None`` (each sample's own prediction), one class index for the whole
batch, one index per sample (list or tensor), a class name (when labels are known), or a
list of names. Resolution happens on the logits of the unperturbed input, so a method that
runs many noisy or masked copies still explains the class predicted for the real image.

A target may also be a *score function*: a callable mapping the model's output (the
selected output, see :func:`select_output`) to the one score per sample to explain, shape
``(N,)``. It covers models that are not single-label classifiers::

    lambda out: out[:, 7].sigmoid()                  # multi-label: one label's probability
    lambda out: out[:, 0]                            # regression: the output itself
    lambda out: (out[:, 3] * mask).sum(dim=(1, 2))   # segmentation: class 3 over a mask

With a score function, methods see a one-column "logit" matrix holding the score (see
:func:`score_logits`), so everything that explains "the target's logit" explains the
score; methods that need a class's softmax probability refuse it (see
``Method.uses_probability``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from convlens.errors import TargetError, did_you_mean
from convlens.models.outputs import OutputKey, select_output  # noqa: F401 (re-exported)

ScoreFunction = Callable[[Any], torch.Tensor]
TargetLike = None | int | str | Sequence[int | str] | torch.Tensor | ScoreFunction


def is_score_function(target: object) -> bool:
    """True for a callable target (not a class, a tensor or a string)."""
    return callable(target) and not isinstance(target, (torch.Tensor, str, type))


def score_name(target: object) -> str:
    """A display name for a score function: its ``__name__`` unless it is a lambda."""
    name = getattr(target, "__name__", None)
    return "custom score" if not name or name == "<lambda>" else name


def score_logits(score_fn: ScoreFunction, out: torch.Tensor) -> torch.Tensor:
    """The score function's value as a one-column logit matrix ``(N, 1)``.

    Raises:
        TargetError: when the function fails or does not return one score per sample.
    """
    n = out.shape[0] if out.dim() else 0
    try:
        score = score_fn(out)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
        raise TargetError(
            f"the target function failed on the model output of shape {tuple(out.shape)}: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    if not isinstance(score, torch.Tensor) or not score.is_floating_point():
        got = score.dtype if isinstance(score, torch.Tensor) else type(score).__name__
        raise TargetError(
            "a target function must return a float tensor with one score per sample, shape "
            f"(N,), got {got}")
    if score.dim() == 2 and score.shape[1] == 1:
        score = score[:, 0]
    if score.dim() != 1 or score.shape[0] != n:
        raise TargetError(
            f"a target function must return one score per sample, shape ({n},), got "
            f"{tuple(score.shape)}; reduce over the other dimensions (e.g. .sum(dim=(1, 2)))")
    return score.unsqueeze(1)


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
    hint = did_you_mean(name, labels)
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
        target: See the module docstring. A score function resolves to index 0 of its
            one-column logit matrix (see :func:`score_logits`).
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
    if is_score_function(target):
        return torch.zeros(n, dtype=torch.long, device=logits.device)
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


class mask_score:  # noqa: N801 - used like a function: target=mask_score(3, mask)
    """Score function for segmentation: the class's logits summed over a mask.

    ``score(out) = sum_ij mask_ij * out[:, class_index, i, j]`` for a segmentation output
    ``(N, classes, H, W)``: Seg-Grad-CAM's score (Vinogradova et al. 2020, Towards
    Interpretable Semantic Segmentation via Gradient-weighted Class Activation Mapping),
    so every method that explains a score explains "why these pixels are this class".

    Args:
        class_index: The class channel of the output.
        mask: ``(H, W)`` for the whole batch or ``(N, H, W)`` per sample; bool or float
            weights (e.g. the predicted mask ``out.argmax(1) == class_index``, or one object).

    Example:
        >>> attribute(seg_net, x, "gradcam", target=mask_score(3, mask))  # doctest: +SKIP
    """

    def __init__(self, class_index: int, mask: torch.Tensor) -> None:
        if isinstance(class_index, bool) or not isinstance(class_index, int):
            raise TargetError(f"mask_score: class_index must be an int, got {class_index!r}")
        if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TargetError(f"mask_score: mask must be a tensor (H, W) or (N, H, W), got {got}")
        self.class_index, self.mask = class_index, mask
        self.__name__ = f"class {class_index} over a mask"

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 4 or not 0 <= self.class_index < out.shape[1]:
            raise TargetError(
                f"mask_score({self.class_index}) needs a segmentation output (N, classes, H, W) "
                f"with class {self.class_index}, got {tuple(out.shape)}; choose the output "
                "with output= (e.g. output='out' for torchvision's segmentation models)")
        if self.mask.shape[-2:] != out.shape[-2:] or (
                self.mask.dim() == 3 and self.mask.shape[0] != out.shape[0]):
            raise TargetError(
                f"mask_score: mask of shape {tuple(self.mask.shape)} does not fit the output "
                f"{tuple(out.shape)}; give (H, W) = {tuple(out.shape[-2:])}, or one per sample")
        mask = self.mask.to(device=out.device, dtype=out.dtype)
        return (out[:, self.class_index] * mask).sum(dim=(1, 2))


class box_score:  # noqa: N801 - used like a function: target=box_score(0, class_index=2)
    """Score function for detection: one box's score, or one class's logit for that box.

    Works on a detector output with a fixed number of boxes per image, batched: the
    ``(N, boxes)`` scores (``class_index=None``: ``out[:, index]``) or the ``(N, boxes,
    classes)`` class logits (``out[:, index, class_index]``). Select that tensor among the
    detector's outputs with ``output=`` (``attribute(..., output="logits")`` or
    ``Classifier(module, output="logits")``); by default the first tensor is explained,
    often the box coordinates ``(N, boxes, 4)``, which a shape check cannot tell from
    logits. Prefer logits to post-softmax scores: a
    probability saturates and its gradient vanishes (the reason convlens explains logits).

    Detectors that return a variable number of boxes per image (torchvision's, a list of
    dicts) need a wrapper returning fixed-size batched tensors; explain one image at a time.

    Args:
        index: The box (its position in the detector's output, e.g. from non-maximum
            suppression on a first forward pass).
        class_index: The class whose logit to explain; ``None`` for a per-box score.
    """

    def __init__(self, index: int, class_index: int | None = None) -> None:
        for value, what in ((index, "index"), (class_index, "class_index")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TargetError(f"box_score: {what} must be an int, got {value!r}")
        self.index, self.class_index = index, class_index
        self.__name__ = (f"box {index}" if class_index is None
                         else f"box {index}, class {class_index}")

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        want = 2 if self.class_index is None else 3
        shape = "(N, boxes) scores" if want == 2 else "(N, boxes, classes) logits"
        fits = out.dim() == want and 0 <= self.index < out.shape[1] and (
            want == 2 or 0 <= self.class_index < out.shape[2])
        if not fits:
            raise TargetError(
                f"{self.__name__}: needs the detector's {shape} with box {self.index}"
                f"{'' if want == 2 else f' and class {self.class_index}'}, got "
                f"{tuple(out.shape)}; select that output with output= (an index or a key)")
        return out[:, self.index] if want == 2 else out[:, self.index, self.class_index]
