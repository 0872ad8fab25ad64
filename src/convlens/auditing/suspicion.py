"""Which strategies deserve a look first, and do they really drive the decision?

SpRAy (:mod:`convlens.auditing.spray`) finds clusters of similar attribution maps per group;
this module ranks them across all groups and tests the top ones causally.

Suspicion (documented formula, every part kept so a report can say *why*)::

    suspicion = support * mean(error_rate, concentration, isolation)

* ``error_rate`` in [0, 1]: the fraction of members whose label differs from the prediction
  (left out of the mean when labels are unknown). A Clever-Hans strategy fires on images
  that merely share the artefact, so its members are often mistakes.
* ``concentration`` in [0, 1]: ``1 - 2 * a`` where ``a`` is the smallest fraction of the
  image area holding half of the relevance of the cluster's *mean* map; a uniform map scores
  0, a map whose mass sits in one pixel scores ~1. Measured on the mean map so that only a
  region the members agree on counts (a watermark in a fixed corner), not maps that are each
  small but scattered.
* ``isolation`` in [0, 1]: ``1 - cosine(mean map, mean map of the rest of the group)``; a
  group with one cluster scores 0. Maps are non-negative, so the cosine is in [0, 1]. We
  compare with the rest of the group rather than with its largest cluster: when the artefact
  is common (a watermark on most images of a class), the Clever-Hans cluster *is* the largest
  and would otherwise be measured against itself.
* ``support = size / (size + 5)`` damps clusters of one or two images, whose parts are noise.

Causal check (Lapuschkin et al. 2019 removed the watermark and watched the prediction; we
do the same for any cluster): the cluster's hot region is where its mean map reaches half
its maximum, upsampled to the input; it is covered on every member (filled with that image's
per-channel mean) and we count how often the prediction changes. The control covers a region
of exactly the same shape and size at a random position (the mask circularly shifted by a
random offset drawn from a seeded ``torch.Generator``, one per member), so the figure
"83% vs 6%" separates "this region matters" from "covering anything that large matters".

See docs/architecture.md, "Layers and the direction data flows": scoring is pure numpy; the
causal check runs forwards only (no autograd), batched, in eval mode, leaving the model as
found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens._hooks import evaluation_mode
from convlens.errors import ConvlensError

SUPPORT_HALF = 5


@dataclass
class ClusterScore:
    """One cluster's suspicion and its parts.

    Attributes:
        group: The group (class name) the cluster belongs to.
        cluster: Its id within the group (0 = the largest).
        size: Members.
        error_rate: Fraction of members that are mistakes, ``None`` without labels.
        concentration, isolation, support: See the module docstring.
        suspicion: The combined score.
        area: Fraction of the image holding half the mean map's relevance.
        alone: The cluster is its group's only one: ``isolation`` compares with nothing
            (it is 0 in the score) and :meth:`why` does not speak of it.
    """

    group: str
    cluster: int
    size: int
    error_rate: float | None
    concentration: float
    isolation: float
    support: float
    suspicion: float
    area: float
    alone: bool = False

    def why(self) -> str:
        """The parts in words, strongest first."""
        parts: list[tuple[float, str]] = []
        if self.error_rate is not None:
            parts.append((self.error_rate, f"{self.error_rate:.0%} of its {self.size} members "
                                           "are mistakes (label differs from prediction)"))
        parts.append((self.concentration, f"half of its relevance lies in {self.area:.1%} of "
                                          "the image"))
        if not self.alone:
            parts.append((self.isolation, f"its mean map overlaps the rest of its group by "
                                          f"{1 - self.isolation:.0%}"))
        parts.sort(key=lambda p: -p[0])
        return "; ".join(text for _, text in parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "why": self.why()}


def mean_map(maps: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Mean of non-negative, sum-normalised maps ``(N, H, W) -> (H, W)`` (float64).

    Accumulated ``chunk`` maps at a time, so the float64 working copy stays small whatever N.
    """
    maps = np.asarray(maps)
    total = np.zeros(maps.shape[1:], dtype=np.float64)
    for start in range(0, len(maps), chunk):
        rows = np.maximum(maps[start:start + chunk].astype(np.float64), 0.0)
        sums = rows.reshape(len(rows), -1).sum(axis=1)
        scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
        total += np.tensordot(scale, rows, axes=1)
    return total / max(len(maps), 1)


def half_mass_area(heat: np.ndarray) -> float:
    """Smallest fraction of the pixels that holds half of the map's (non-negative) mass."""
    values = np.sort(np.maximum(np.asarray(heat, dtype=np.float64).ravel(), 0.0))[::-1]
    total = values.sum()
    if total <= 0:
        return 1.0
    needed = int(np.searchsorted(np.cumsum(values), 0.5 * total)) + 1
    return needed / values.size


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two maps (0 when either is all zero)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def score_group(group: str, maps: np.ndarray, clusters: np.ndarray,
                correct: Sequence[bool | None] | np.ndarray | None = None) -> list[ClusterScore]:
    """Score every cluster of one group.

    Args:
        group: The group's name.
        maps: ``(N, H, W)`` downsized maps of the group's members.
        clusters: ``(N,)`` cluster ids (0 = the largest, as :func:`~convlens.auditing.spray.spray`
            numbers them).
        correct: Per member ``True``/``False``, or ``None`` (unknown label).
    """
    maps = np.asarray(maps)
    clusters = np.asarray(clusters)
    if maps.ndim != 3 or len(maps) != len(clusters):
        raise ConvlensError(f"score_group needs maps (N, H, W) and N cluster ids, got "
                            f"{maps.shape} and {clusters.shape}")
    known = None
    if correct is not None:
        known = np.array([c if c is not None else np.nan for c in correct], dtype=np.float64)
    scores = []
    for cid in np.unique(clusters):
        members = clusters == cid
        rest = ~members
        scores.append(score_members(group, int(cid), mean_map(maps[members]),
                                    mean_map(maps[rest]) if rest.any() else None,
                                    int(members.sum()),
                                    None if known is None else known[members]))
    return scores


def score_members(group: str, cluster: int, heat: np.ndarray, rest_heat: np.ndarray | None,
                  size: int, correct: np.ndarray | None) -> ClusterScore:
    """The suspicion of one set of images from its mean map, the mean map of the rest of its
    context (``None``: there is no rest) and its members' correctness (1/0/NaN unknown)."""
    error = None
    if correct is not None:
        values = np.asarray(correct, dtype=np.float64)
        values = values[~np.isnan(values)]
        error = float(1.0 - values.mean()) if len(values) else None
    area = half_mass_area(heat)
    concentration = float(np.clip(1.0 - 2.0 * area, 0.0, 1.0))
    isolation = 0.0
    if rest_heat is not None:
        isolation = float(np.clip(1.0 - cosine(heat, rest_heat), 0.0, 1.0))
    support = size / (size + SUPPORT_HALF)
    parts = [p for p in (error, concentration, isolation) if p is not None]
    return ClusterScore(group, cluster, size, error, concentration, isolation, support,
                        float(support * np.mean(parts)), area, alone=rest_heat is None)


def rank_clusters(scores: Sequence[ClusterScore]) -> list[ClusterScore]:
    """Most suspicious first; ties by group name and cluster id (deterministic)."""
    return sorted(scores, key=lambda s: (-s.suspicion, s.group, s.cluster))


def hot_region(heat: np.ndarray, size: tuple[int, int], *, threshold: float = 0.5) -> torch.Tensor:
    """Where the (upsampled) mean map reaches ``threshold`` of its maximum: bool ``(H, W)``."""
    tensor = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    up = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = float(up.max())
    if peak <= 0:
        return torch.zeros(size, dtype=torch.bool)
    return up >= threshold * peak


@dataclass
class CausalResult:
    """How often covering the hot region, or a random region of the same size, changes
    the prediction."""

    flip_rate: float
    random_flip_rate: float
    members: int
    region_fraction: float

    def sentence(self) -> str:
        return (f"covering this region ({self.region_fraction:.1%} of the image) changes "
                f"{self.flip_rate:.0%} of these {self.members} predictions; a random region of "
                f"the same size, {self.random_flip_rate:.0%}")

    def to_dict(self) -> dict:
        return {**asdict(self), "sentence": self.sentence()}


def _cover(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    fill = x.mean(dim=(2, 3), keepdim=True)
    m = masks[:, None].to(x.dtype)
    return x * (1 - m) + fill * m


@torch.no_grad()
def _predict(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with evaluation_mode(module):
        return module(x).argmax(dim=1)


def causal_check(model: nn.Module | object, x: torch.Tensor, region: torch.Tensor,
                 predicted: Sequence[int] | torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None, seed: int = 0,
                 batch_size: int = 64) -> CausalResult:
    """Cover ``region`` on every image of ``x`` and count changed predictions, against a
    randomly placed region of the same shape.

    Args:
        model: An ``nn.Module`` returning logits, or a Classifier.
        x: Preprocessed members ``(N, C, H, W)``.
        region: bool ``(H, W)`` mask (see :func:`hot_region`).
        predicted: The predictions to compare with; default: the model's on ``x``.
        generator: Draws the random offsets; default ``torch.Generator().manual_seed(seed)``.
        batch_size: Images per forward.
    """
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise ConvlensError(f"causal_check needs an nn.Module or a Classifier, got "
                            f"{type(model).__name__}")
    if x.dim() != 4 or tuple(region.shape) != tuple(x.shape[2:]):
        raise ConvlensError(f"causal_check needs x (N, C, H, W) and a region (H, W) of the same "
                            f"size, got {tuple(x.shape)} and {tuple(region.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    n, (height, width) = len(x), region.shape
    region = region.to(torch.bool).cpu()
    shifts = torch.stack([torch.randint(0, height, (n,), generator=generator),
                          torch.randint(0, width, (n,), generator=generator)], dim=1)
    flips = random_flips = 0
    for start in range(0, n, batch_size):
        batch = x[start:start + batch_size]
        if predicted is None:
            before = _predict(module, batch)
        else:
            before = torch.as_tensor(predicted[start:start + batch_size]).to(batch.device)
        count = len(batch)
        masks = region.expand(count, height, width).to(batch.device)
        shifted = torch.stack([torch.roll(region, (int(dy), int(dx)), dims=(0, 1))
                               for dy, dx in shifts[start:start + count]]).to(batch.device)
        flips += int((_predict(module, _cover(batch, masks)) != before).sum())
        random_flips += int((_predict(module, _cover(batch, shifted)) != before).sum())
    return CausalResult(flip_rate=flips / max(n, 1), random_flip_rate=random_flips / max(n, 1),
                        members=n, region_fraction=float(region.float().mean()))


def group_scores(groups: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence | None]]
                 ) -> list[ClusterScore]:
    """Score and rank the clusters of several groups: ``{name: (maps, clusters, correct)}``."""
    scores: list[ClusterScore] = []
    for name, (maps, clusters, correct) in groups.items():
        scores.extend(score_group(name, maps, clusters, correct))
    return rank_clusters(scores)
