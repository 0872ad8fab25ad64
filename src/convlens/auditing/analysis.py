"""From the pass's records to ``audit.json``: accuracy, strategies, suspicion, causal checks.

Everything here is a deterministic function of the stored records and maps (sorted by path,
seeded SpRAy and causal checks, floats rounded to 6 digits), so a resumed run and an
uninterrupted one write the same ``audit.json``.

The ``audit.json`` schema is fixed (fields may be added, none renamed); see
:func:`build_audit`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convlens.auditing.scoring import mean_of, summary
from convlens.auditing.spray import spray
from convlens.auditing.suspicion import ClusterScore, mean_map, rank_clusters, score_group
from convlens.jobs.progress import ProgressCallback, emit
from convlens.jobs.store import ResultStore

GROUP_BY = ("predicted", "label")


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


@dataclass
class StoredImage:
    """One image's record with where its maps are."""

    record: dict[str, Any]
    shard: str
    row: int
    true_row: int | None


def stored_images(store: ResultStore, keys: Iterable[str]) -> list[StoredImage]:
    """The records of ``keys`` (the current dataset's images), sorted by path."""
    wanted = set(keys)
    found: dict[str, StoredImage] = {}
    for shard in store.shards():
        for record in store.shard_records(shard):
            key = record.get("key")
            if key in wanted and key not in found:
                found[key] = StoredImage(record, shard.name, record["row"], record["true_row"])
    return sorted(found.values(), key=lambda s: (s.record["path"], s.record["key"]))


class MapReader:
    """Reads stored maps lazily (memory-mapped), one shard file open at a time per name."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def _array(self, shard: str, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            path = self.store.array_path(self.store.folder / shard, name)
            self._cache[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._cache[key]

    def predicted(self, image: StoredImage) -> np.ndarray:
        return np.asarray(self._array(image.shard, "maps")[image.row])

    def true(self, image: StoredImage) -> np.ndarray | None:
        if image.true_row is None:
            return None
        return np.asarray(self._array(image.shard, "truemaps")[image.true_row])

    def stack(self, images: Sequence[StoredImage], dtype: Any = np.float16) -> np.ndarray:
        """The predicted-class maps of ``images`` as one ``(N, H, W)`` array of ``dtype``.

        Filled row by row from the memory-mapped shards into one preallocated array: no list
        of per-image copies and no second full-size array when converting to float32.
        """
        if not images:
            return np.zeros((0, 1, 1), dtype)
        first = self.predicted(images[0])
        out = np.empty((len(images), *first.shape), dtype)
        for k, image in enumerate(images):
            out[k] = self._array(image.shard, "maps")[image.row]
        return out


def class_metrics(images: Sequence[StoredImage], names: Sequence[str]
                  ) -> tuple[dict[str, dict[str, Any]], list[list[int]]]:
    """Support, precision and recall per class, and the confusion matrix (rows: label)."""
    labelled = [i.record for i in images if i.record["label"] is not None]
    predicted = Counter(i.record["predicted"] for i in images if i.record["label"] is not None)
    support = Counter(r["label"] for r in labelled)
    hits = Counter(r["label"] for r in labelled if r["correct"])
    metrics = {}
    for name in names:
        metrics[name] = {
            "support": support.get(name, 0),
            "precision": _r(hits[name] / predicted[name]) if predicted.get(name) else None,
            "recall": _r(hits[name] / support[name]) if support.get(name) else None,
        }
    position = {n: k for k, n in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for r in labelled:
        matrix[position[r["label"]]][position[r["predicted"]]] += 1
    return metrics, matrix


CausalRunner = Callable[[list[StoredImage], np.ndarray, int], Any]


def build_audit(images: list[StoredImage], reader: MapReader, *, header: dict[str, Any],
                errors: Sequence[dict[str, str]], group_by: str = "predicted",
                causal: CausalRunner | None = None, checks: int = 3,
                spray_options: dict[str, Any] | None = None, seed: int = 0,
                progress: ProgressCallback | None = None,
                metric_cards: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble the ``audit.json`` content.

    Schema: ``{"model", "method", "layer", "group_by", "images": [{"path", "label",
    "predicted", "probability", "correct", "cluster", ...}], "errors": [{"path", "reason"}],
    "classes": [{"name", "support", "precision", "recall", "eigenvalues", "clusters": [{"id",
    "size", "members", "error_rate", "suspicion", "flip_rate", ...}], ...}], "suspicious":
    [{"class", "cluster", "suspicion", "why", ...}]}`` (most suspicious first). Added fields:
    ``accuracy``, ``confusion`` ``{"classes", "matrix"}``, per image ``top5``, per cluster the
    suspicion's parts and the causal figures, per class the SpRAy steps. With metrics
    (``metric_cards``): top-level ``metrics`` ``{key: {"card", "mean", "ci": [low, high],
    "count", "undefined"}}`` (bootstrap 95 %), and ``metrics`` ``{key: mean}`` per image (the
    score), per class, per cluster and per suspicious entry.

    Args:
        images: From :func:`stored_images`.
        reader: Reads their maps.
        header: ``model``, ``method``, ``layer`` (and any extra fields).
        errors: Unreadable files.
        group_by: ``"predicted"`` (the decisions the model made) or ``"label"`` (the paper).
        causal: ``causal(members, mean_map, seed) -> CausalResult`` for the top clusters
            (:mod:`convlens.auditing.causal`); its ``to_dict()`` is the cluster's
            ``causal_check`` (sizes x infills table, Wilson intervals, verdict).
        checks: How many of the most suspicious clusters get the causal check.
        spray_options: Passed to :func:`~convlens.auditing.spray.spray`.
        metric_cards: ``{key: card}`` of the metrics scored in the pass
            (:func:`convlens.auditing.scoring.card`); None: no metric fields.
    """
    field = "predicted" if group_by == "predicted" else "label"
    keys = list(metric_cards or {})
    groups: dict[str, list[int]] = defaultdict(list)
    for position, image in enumerate(images):
        name = image.record[field]
        if name is not None:
            groups[name].append(position)
    names = sorted({n for i in images for n in (i.record["label"], i.record["predicted"])
                    if n is not None})
    metrics, matrix = class_metrics(images, names)
    cluster_of: dict[int, int] = {}
    per_class: dict[str, dict[str, Any]] = {}
    scores: list[ClusterScore] = []
    options = {"tsne": False, "seed": seed, **(spray_options or {})}
    emit(progress, "cluster", 0, len(groups))
    for done, name in enumerate(sorted(groups), start=1):
        members = groups[name]
        maps = reader.stack([images[p] for p in members], np.float32)
        result = spray(maps, **options)
        for p, c in zip(members, result.labels):
            cluster_of[p] = int(c)
        correct = [images[p].record["correct"] for p in members]
        group_scores = score_group(name, maps, result.labels, correct)
        scores.extend(group_scores)
        by_id = {s.cluster: s for s in group_scores}
        clusters = []
        for cid in range(result.n_clusters):
            inside = [p for p, c in zip(members, result.labels) if c == cid]
            score = by_id[cid]
            clusters.append({
                "id": cid, "size": len(inside),
                "members": [images[p].record["path"] for p in inside],
                "error_rate": _r(score.error_rate), "suspicion": _r(score.suspicion),
                "flip_rate": None, "random_flip_rate": None,
                "concentration": _r(score.concentration), "isolation": _r(score.isolation),
                "support_weight": _r(score.support), "half_mass_area": _r(score.area),
                "mean_map": [[_r(v) for v in row] for row in mean_map(maps[result.labels == cid])],
            })
            if keys:
                clusters[-1]["metrics"] = {k: mean_of([images[p].record for p in inside], k)
                                           for k in keys}
        per_class[name] = {"eigenvalues": [_r(v) for v in result.eigenvalues],
                           "n_clusters": result.n_clusters, "clusters": clusters,
                           "spray": [s.to_dict() | {"seconds": None} for s in result.steps]}
        del maps, result  # one group's maps at a time: freed before the next is read
        emit(progress, "cluster", done, len(groups), name)
    ranked = rank_clusters(scores)
    suspicious = []
    candidates = [s for s in ranked if s.size >= 2][:checks] if causal is not None else []
    emit(progress, "check", 0, len(candidates))
    for done, score in enumerate(candidates, start=1):
        cluster = per_class[score.group]["clusters"][score.cluster]
        inside = [p for p in groups[score.group] if cluster_of[p] == score.cluster]
        heat = np.asarray(cluster["mean_map"], dtype=np.float64)
        result = causal([images[p] for p in inside], heat, seed + done)
        cluster["flip_rate"] = _r(result.flip_rate)
        cluster["random_flip_rate"] = _r(result.random_flip_rate)
        cluster["causal"] = result.sentence()
        cluster["checked_members"] = result.members
        cluster["causal_check"] = result.to_dict()
        emit(progress, "check", done, len(candidates), score.group)
    for score in ranked:
        cluster = per_class[score.group]["clusters"][score.cluster]
        entry = {"class": score.group, "cluster": score.cluster, "suspicion": _r(score.suspicion),
                 "why": score.why(), "size": score.size}
        if keys:
            entry["metrics"] = cluster["metrics"]
        if cluster.get("causal"):
            entry["causal"] = cluster["causal"]
            entry["flip_rate"] = cluster["flip_rate"]
            entry["random_flip_rate"] = cluster["random_flip_rate"]
        suspicious.append(entry)
    labelled = [i.record for i in images if i.record["label"] is not None]
    classes = []
    for name in names:
        entry = {"name": name, **metrics[name], "eigenvalues": [], "n_clusters": 0,
                 "clusters": []}
        entry.update(per_class.get(name, {}))
        if keys:
            inside = [images[p].record for p in groups.get(name, [])]
            entry["metrics"] = {k: mean_of(inside, k) for k in keys}
        classes.append(entry)
    image_rows = []
    for position, image in enumerate(images):
        r = image.record
        image_rows.append({"path": r["path"], "label": r["label"], "predicted": r["predicted"],
                           "probability": r["probability"], "correct": r["correct"],
                           "cluster": cluster_of.get(position), "top5": r["top5"]})
        if keys:
            image_rows[-1]["metrics"] = {k: (r.get("metrics") or {}).get(k) for k in keys}
    content = {
        **header, "group_by": group_by,
        "accuracy": _r(sum(bool(r["correct"]) for r in labelled) / len(labelled))
        if labelled else None,
        "images": image_rows,
        "errors": sorted(({"path": e["path"], "reason": e["reason"]} for e in errors),
                         key=lambda e: e["path"]),
        "classes": classes,
        "confusion": {"classes": names, "matrix": matrix},
        "suspicious": suspicious,
    }
    if keys:
        records = [i.record for i in images]
        content["metrics"] = {k: {"card": metric_cards[k], **summary(records, k, seed)}
                              for k in keys}
    return content
