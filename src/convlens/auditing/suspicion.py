"""Which strategies deserve a look first: the suspicion score of SpRAy's clusters.

SpRAy (:mod:`convlens.auditing.spray`) finds clusters of similar attribution maps per group;
this module ranks them across all groups.

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

The causal check of the top clusters lives in :mod:`convlens.auditing.causal`.

See docs/architecture.md, "Layers and the direction data flows": scoring is pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

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


def group_scores(groups: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence | None]]
                 ) -> list[ClusterScore]:
    """Score and rank the clusters of several groups: ``{name: (maps, clusters, correct)}``."""
    scores: list[ClusterScore] = []
    for name, (maps, clusters, correct) in groups.items():
        scores.extend(score_group(name, maps, clusters, correct))
    return rank_clusters(scores)
