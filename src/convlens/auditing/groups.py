"""One group's strategies: SpRAy at several resolutions, the partition chosen by its scores.

The eigengap (:func:`convlens.auditing.spray.eigengap`) is one decision made on one
spectrum, and a k-NN graph of real maps rarely has a clear jump: a tag on 60 % of a class's
images gave eigenvalues 0, 0.11, 0.18, 0.30, 0.38, ... and the eigengap said "one strategy",
hiding the tag. So the eigengap no longer gates: the group is partitioned at every
resolution k = 1 .. ``MAX_RESOLUTION`` (k-means on the same spectral embedding, near-identical
clusters merged), every cluster of every partition is scored
(:func:`convlens.auditing.suspicion.score_group`), and the group keeps the partition whose
most suspicious cluster is the most suspicious of all (ties: the eigengap's own k, then the
smaller k). The result stays a partition (every image in exactly one cluster), the clusters
the ranking names are among its clusters, and the eigengap's choice and how clear it was are
reported beside it.

See docs/architecture.md, "Audit".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlens.auditing.spray import Step, spray
from convlens.auditing.suspicion import ClusterScore, mean_map, score_group

MAX_RESOLUTION = 8
CLEAR_JUMP = 3.0
"""An eigengap jump ratio at least this large is called clear (spray's ``min_jump``)."""


@dataclass
class GroupClusters:
    """The chosen partition of one group, and how it was chosen.

    Attributes:
        name: The group (a class name).
        labels: Cluster id per member (0 = the largest), the chosen partition.
        scores: One :class:`ClusterScore` per cluster id, in id order.
        means: The clusters' mean maps, in id order.
        eigenvalues, steps: SpRAy's spectrum and recorded steps.
        eigengap_k, eigengap_jump: The eigengap's choice and its jump ratio.
        chosen_k: The resolution kept.
        tried: Per resolution ``{"k", "clusters", "top_suspicion"}``.
    """

    name: str
    labels: np.ndarray
    scores: list[ClusterScore]
    means: list[np.ndarray]
    eigenvalues: np.ndarray
    steps: list[Step]
    eigengap_k: int
    eigengap_jump: float | None
    chosen_k: int
    tried: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_clusters(self) -> int:
        return len(self.scores)

    def member_positions(self, positions: Sequence[int]) -> list[list[int]]:
        """Per cluster id, the group's ``positions`` (its images in the audit) it holds."""
        members: list[list[int]] = [[] for _ in range(self.n_clusters)]
        for position, cid in zip(positions, self.labels):
            members[int(cid)].append(position)
        return members

    def resolution(self) -> dict[str, Any]:
        """JSON-ready: what the eigengap said, how clear it was, what was kept and why."""
        jump = self.eigengap_jump
        clear = jump is not None and jump >= CLEAR_JUMP
        if jump is None:
            said = "too few maps for a spectrum"
        elif np.isinf(jump):
            said = (f"the eigengap finds {self.eigengap_k} separate component(s) of the "
                    "neighbour graph")
        else:
            said = (f"the eigengap's largest jump (ratio {jump:.2f}) is "
                    f"{'clear' if clear else f'not clear (below {CLEAR_JUMP:g})'} and points "
                    f"at {self.eigengap_k} cluster(s)")
        kept = (f"kept k={self.chosen_k} of k=1..{max((t['k'] for t in self.tried), default=1)}"
                ", the resolution whose most suspicious cluster scores highest")
        return {"eigengap_k": self.eigengap_k,
                "eigengap_jump": None if jump is None or np.isinf(jump) else round(jump, 6),
                "clear": bool(clear or (jump is not None and np.isinf(jump))),
                "chosen_k": self.chosen_k, "tried": self.tried, "note": f"{said}; {kept}"}


def cluster_group(name: str, maps: np.ndarray, correct: Sequence[bool | None], *,
                  options: dict[str, Any], max_resolution: int = MAX_RESOLUTION
                  ) -> GroupClusters:
    """Partition one group's maps ``(N, H, W)`` at every resolution and keep the best-scored.

    Args:
        name: The group's name.
        maps: Its members' stored maps (float32).
        correct: Per member ``True``/``False``/``None``.
        options: Passed to :func:`convlens.auditing.spray.spray` (seed, neighbours, ...).
    """
    top = max(1, min(max_resolution, len(maps)))
    result = spray(maps, resolutions=range(1, top + 1), **options)
    partitions = result.partitions or {result.n_clusters: result.labels}
    best: tuple[float, int, int] | None = None
    scored: dict[int, list[ClusterScore]] = {}
    tried = []
    for k, labels in sorted(partitions.items()):
        scores = sorted(score_group(name, maps, labels, correct), key=lambda s: s.cluster)
        scored[k] = scores
        peak = max(s.suspicion for s in scores)
        tried.append({"k": k, "clusters": len(scores), "top_suspicion": round(peak, 6)})
        # highest peak; ties prefer the eigengap's own k, then the smaller k
        rank = (round(peak, 9), int(k == result.eigengap_k), -k)
        if best is None or rank > best:
            best = rank
            chosen = k
    labels = partitions[chosen]
    means = [mean_map(maps[labels == c]) for c in range(len(scored[chosen]))]
    return GroupClusters(name=name, labels=labels, scores=scored[chosen], means=means,
                         eigenvalues=result.eigenvalues, steps=result.steps,
                         eigengap_k=result.eigengap_k, eigengap_jump=result.eigengap_jump,
                         chosen_k=chosen, tried=tried)
