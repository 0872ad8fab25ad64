"""Per-image scores and what every metric shares; the registry re-exported.

A metric is a pure function ``fn(model, x, maps_or_method, target=None, **options) -> Scores``
registered once with its family, its options with defaults (the keyword-only parameters of
the function, written once where they are used), the paper it follows and its presets
(:mod:`convlens.metrics.presets`). The CLI choices, ``evaluate``, the documentation table
and the conformance tests all read the registry, which lives in the leaf
:mod:`convlens.metrics.registry` (``Metric``, ``register_metric``, ``metrics``,
``get_metric``) and is re-exported here (docs/architecture.md, "Layers").

Two kinds of metric exist: ``needs="maps"`` metrics score given attribution maps (deletion,
insertion, ROAD, faithfulness correlation, MuFidelity, infidelity, complexity, sparseness);
``needs="method"`` metrics re-run the attribution method on perturbed inputs or models
(max-sensitivity, model-parameter randomisation, random logit) and take the method's name.

Every forward pass made by a metric goes through :func:`class_scores`: batched across images
and perturbation steps (at most ``batch_size`` inputs at once), under ``torch.no_grad`` with
the model in eval mode (``convlens._hooks.evaluation_mode``), on the model's device, with one
clear error when the model returns NaN or infinite values. ``batch_size=None`` (the default
of the metrics whose batch only groups forwards: deletion, insertion, faithfulness
correlation, MuFidelity) takes :func:`default_batch_size` of the device: small on a CPU,
where a large batch costs more per image, large on an accelerator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import evaluation_mode
from convlens.attribution.core import check_input
from convlens.attribution.targets import TargetLike, resolve_targets
from convlens.errors import (
    ConvlensError,
    InputShapeError,
    MetricError,
)
from convlens.metrics.registry import (  # noqa: F401  (re-exported)
    FAMILIES,
    Metric,
    get_metric,
    metrics,
    register_metric,
)

OUTPUTS = ("probability", "logit")
CONSTANT = "constant map: no ranking of pixels to test"


@dataclass
class Scores:
    """One metric's result for a batch of images.

    Attributes:
        metric: The metric's name.
        values: One score per image (float64); NaN where the score is undefined, with the
            reason in ``undefined``.
        undefined: Per image, ``None`` or why there is no score (e.g. a constant map).
        curves: Named per-image curves ``(N, K)`` (deletion, ROAD...), on ``curve_x``.
        curve_x: The curves' x-axis (fraction of pixels removed, percentages...).
        stages: For the randomisation test: stage name -> per-image values.
        options: The options the scores were computed with.
    """

    metric: str
    values: np.ndarray
    undefined: list[str | None] = field(default_factory=list)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    curve_x: np.ndarray | None = None
    curve_label: str = ""
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if not self.undefined:
            self.undefined = [None] * len(self.values)

    @property
    def mean(self) -> float | None:
        """Mean over the images where the score is defined; None if there are none."""
        defined = self.values[np.isfinite(self.values)]
        return float(defined.mean()) if defined.size else None


# ---------------------------------------------------------------------------------------------
# Inputs


def unwrap(model: object) -> tuple[nn.Module, Sequence[str] | None]:
    """The ``nn.Module`` and labels of a Classifier or a bare module."""
    labels = getattr(model, "labels", None)
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise InputShapeError(
            f"model must be a torch.nn.Module or a convlens.Classifier, got {type(model).__name__}")
    return module, labels


def prepare_x(module: nn.Module, x: object) -> torch.Tensor:
    """A validated, detached batch on the model's device."""
    x = check_input(x)
    param = next(iter(module.parameters()), None)
    if param is not None and param.device != x.device:
        raise InputShapeError(
            f"x is on {x.device} but the model's parameters are on {param.device}; move one: "
            f"x.to('{param.device}') or model.to('{x.device}')")
    return x.detach()


def check_output(out: torch.Tensor, what: str = "the model") -> torch.Tensor:
    """Refuse logits that are not ``(N, classes)`` or contain NaN / infinity."""
    if out.dim() != 2:
        raise MetricError(f"{what} must return logits of shape (N, classes), got "
                          f"{tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise MetricError(
            f"{what} returned NaN or infinite outputs; metrics need finite scores. Check the "
            "model (a division by zero, an overflow in float16...) before evaluating its "
            "explanations")
    return out


def resolve(module: nn.Module, x: torch.Tensor, target: TargetLike,
            labels: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on ``x`` and one target class per image."""
    with evaluation_mode(module), torch.no_grad():
        logits = _forward(module, x)
    return logits, resolve_targets(target, logits, labels)


def _forward(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    try:
        out = module(inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        if isinstance(error, ConvlensError):
            raise
        raise InputShapeError(f"the model failed on an input of shape {tuple(inputs.shape)}: "
                              f"{str(error).splitlines()[0]}") from error
    return check_output(out)


def pixel_maps(maps: object, x: torch.Tensor, name: str = "maps", *, reduce: bool = True
               ) -> torch.Tensor:
    """Attribution maps as one relevance per pixel, ``(N, H, W)`` float on ``x``'s device.

    Accepted: ``(N, H, W)``; ``(N, C, H, W)`` with C = 1 or C = x's channels (summed over
    channels, each pixel's relevance being the total of its channels); and layer-space maps
    ``(N, 1, h, w)`` smaller than the image, bilinearly upsampled as presentation does.
    With ``reduce=False`` the maps are returned broadcast to x's shape ``(N, C, H, W)``.
    """
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if not isinstance(maps, torch.Tensor):
        raise InputShapeError(f"{name} must be a tensor or array, got {type(maps).__name__}")
    n, channels, height, width = x.shape
    expected = (f"({n}, {height}, {width}), ({n}, 1 or {channels}, {height}, {width}) or a "
                f"layer map ({n}, 1, h, w) with h <= {height}, w <= {width}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[0] != n:
        raise InputShapeError(f"{name} of shape {tuple(maps.shape)} do not fit images of shape "
                              f"{tuple(x.shape)}; expected {expected}")
    maps = maps.detach().to(device=x.device, dtype=torch.float32 if x.dtype != torch.float64
                            else torch.float64)
    if tuple(maps.shape[-2:]) != (height, width):
        if maps.shape[1] != 1 or maps.shape[2] > height or maps.shape[3] > width:
            raise InputShapeError(f"{name} of shape {tuple(maps.shape)} do not fit images of "
                                  f"shape {tuple(x.shape)}; expected {expected}")
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    elif maps.shape[1] not in (1, channels):
        raise InputShapeError(f"{name} have {maps.shape[1]} channels but the images have "
                              f"{channels}; expected {expected}")
    if not bool(torch.isfinite(maps).all()):
        raise InputShapeError(f"{name} contain NaN or infinite values")
    return maps.sum(1) if reduce else maps.expand(-1, channels, -1, -1)


def constant_rows(flat: torch.Tensor) -> list[bool]:
    """Per row: all values equal (no order, no correlation defined)."""
    return (flat.amax(1) == flat.amin(1)).tolist()


def check_choice(name: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise MetricError(f"option {name}={value!r} is not valid; choose one of "
                          f"{', '.join(map(repr, valid))}")


def check_positive(name: str, value: Any, integer: bool = True, upper: float | None = None
                   ) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(
        value, (int, float)) and not isinstance(value, bool)
    if not ok or value <= 0 or (upper is not None and value > upper):
        kind = "a positive integer" if integer else "a positive number"
        bound = f" at most {upper}" if upper is not None else ""
        raise MetricError(f"option {name} must be {kind}{bound}, got {value!r}")


def generator_for(seed: int, device: torch.device) -> torch.Generator:
    """A seeded generator on the CPU (draws are moved to the device: identical everywhere)."""
    return torch.Generator().manual_seed(int(seed))


# ---------------------------------------------------------------------------------------------
# Batched forwards

CPU_BATCH_SIZE = 2
ACCELERATOR_BATCH_SIZE = 64


def default_batch_size(device: torch.device | str) -> int:
    """The forward batch of ``batch_size=None``: :data:`CPU_BATCH_SIZE` on a CPU, else 64.

    On a CPU a large batch costs more per image, not less: measured on an idle 2-core box
    (deletion, preset ``rise``, EfficientNet-Lite0, 224 px, ``benchmarks/bench_metric_batch.py``;
    BENCHMARKS.md, "Metrics"), batch 64 took 3.5-3.6x the time per image of batch 2 with one
    or two torch threads under glibc's default allocator (large blocks handed back to the
    system and faulted in again per batch; the activations also outgrow the caches). With
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000`` every batch from 2 to 64
    costs about the same (2 is within 12% of the best). Batch 2 is never far from the best
    in any of these settings; 4 was up to 1.4x slower. On a GPU large batches fill the
    device: 64, as before (not re-measured here).
    """
    kind = torch.device(device).type
    return CPU_BATCH_SIZE if kind == "cpu" else ACCELERATOR_BATCH_SIZE


def class_scores(module: nn.Module, count: int, make_batch: Callable[[int, int], torch.Tensor],
                 classes: torch.Tensor, batch_size: int | None, output: str = "probability"
                 ) -> torch.Tensor:
    """Score ``count`` perturbed inputs, ``batch_size`` at a time, without gradients.

    Args:
        module: The model (eval mode is set here and restored).
        count: How many inputs in all.
        make_batch: ``make_batch(start, stop)`` builds inputs ``start..stop-1``.
        classes: The class to read for each of the ``count`` inputs, ``(count,)``.
        batch_size: The most inputs forwarded at once (bounds memory); ``None``:
            :func:`default_batch_size` of the device ``classes`` are on (the model's).
        output: ``"probability"`` (softmax) or ``"logit"``.

    Returns:
        ``(count,)`` float64 scores on the model's device.
    """
    check_choice("output", output, OUTPUTS)
    if batch_size is None:
        batch_size = default_batch_size(classes.device)
    check_positive("batch_size", batch_size)
    out = torch.empty(count, dtype=torch.float64, device=classes.device)
    with evaluation_mode(module), torch.no_grad():
        for start in range(0, count, batch_size):
            stop = min(count, start + batch_size)
            logits = _forward(module, make_batch(start, stop))
            if output == "probability":
                logits = torch.softmax(logits.double(), dim=1)
            out[start:stop] = logits.gather(1, classes[start:stop, None]).squeeze(1).double()
    return out


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(count, start + size)


def trapezoid(curves: torch.Tensor) -> torch.Tensor:
    """Area under ``(N, K)`` curves on [0, 1] with K equally spaced points (trapezoid rule)."""
    k = curves.shape[1]
    return (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / max(k - 1, 1)


def descending_ranks(flat: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank, 0 = most relevant; ties keep raster order (a stable sort)."""
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``(N, K)`` tensors (float64); NaN where one is constant."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    den = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300),
                       torch.full_like(den, math.nan))


def rank_rows(a: torch.Tensor) -> torch.Tensor:
    """Average ranks per row (ties share their mean rank, as scipy.stats.rankdata)."""
    a = a.double()
    n, k = a.shape
    order = torch.argsort(a, dim=1, stable=True)
    sorted_a = torch.gather(a, 1, order)
    ranks = torch.empty_like(a)
    positions = torch.arange(1, k + 1, dtype=torch.float64, device=a.device).expand(n, k)
    # Tied runs get their mean position: group consecutive equal values.
    new_group = torch.ones_like(sorted_a, dtype=torch.bool)
    new_group[:, 1:] = sorted_a[:, 1:] != sorted_a[:, :-1]
    group = torch.cumsum(new_group.long(), 1) - 1
    sums = torch.zeros_like(sorted_a).scatter_add_(1, group, positions)
    counts = torch.zeros_like(sorted_a).scatter_add_(1, group, torch.ones_like(positions))
    mean_rank = torch.gather(sums / counts.clamp_min(1), 1, group)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman rank correlation; NaN where either row is constant."""
    return pearson(rank_rows(a), rank_rows(b))


def finish(name: str, values: torch.Tensor, undefined: list[str | None], options: dict,
           **extra: Any) -> Scores:
    """Build :class:`Scores`, NaN where undefined."""
    values = values.detach().double().cpu().numpy().copy()
    for i, reason in enumerate(undefined):
        if reason is not None:
            values[i] = np.nan
    return Scores(metric=name, values=values, undefined=undefined, options=options, **extra)
