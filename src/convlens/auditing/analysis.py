"""From the pass's records to ``audit.json``: accuracy, strategies, suspicion, causal checks.

:func:`build_audit` runs four steps, each one function: :func:`cluster_groups` (SpRAy per
group at several resolutions, :mod:`convlens.auditing.groups`), :func:`find_strategies`
(cross-class strategies from what the mistakes share, :mod:`convlens.auditing.strategies`,
and the per-group clusters, ranked together), :func:`check_strategies` (the causal check of
the most suspicious) and :func:`audit_content` (the JSON).

Everything here is a deterministic function of the stored records and maps (sorted by path,
seeded SpRAy and causal checks, floats rounded to 6 digits), so a resumed run and an
uninterrupted one write the same ``audit.json``.

The ``audit.json`` schema is fixed (fields may be added, none renamed); see
:func:`build_audit`.
"""

from __future__ import annotations

from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from convlens.auditing.concept_ranking import (
    concept_sentence,
    outlier_concepts,
    rank_concepts,
    reference_images,
    relevance_shares,
)
from convlens.auditing.groups import GroupClusters, cluster_group
from convlens.auditing.scoring import mean_of, summary
from convlens.auditing.strategies import (
    Search,
    Strategy,
    link_clusters,
    mistake_directions,
    rank_strategies,
)
from convlens.auditing.suspicion import mean_map, rank_clusters, score_members
from convlens.files import LazyList
from convlens.progress import ProgressCallback, emit
from convlens.store import ResultStore

GROUP_BY = ("predicted", "label")


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


@dataclass
class StoredImage:
    """One image's record with where its maps are.

    ``record`` reads like the pass's record (``key``, ``path``, ``label``, ``predicted``,
    ``predicted_index``, ``probability``, ``top5``, ``correct``, ``row``, ``true_row`` and,
    with metrics, ``metrics``); from :func:`stored_images` it is a view of
    :class:`StoredImages`' arrays, built when read.
    """

    record: Mapping[str, Any]
    shard: str
    row: int
    true_row: int | None


_FIELDS = ("key", "path", "label", "predicted", "predicted_index", "probability", "top5",
           "correct", "row", "true_row")


class _Record(Mapping[str, Any]):
    """One image's record, read from :class:`StoredImages`' arrays field by field."""

    __slots__ = ("_images", "_at")

    def __init__(self, images: StoredImages, at: int) -> None:
        self._images = images
        self._at = at

    def __getitem__(self, name: str) -> Any:
        return self._images.field(self._at, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS + (("metrics",) if self._images.metric_keys else ()))

    def __len__(self) -> int:
        return len(_FIELDS) + bool(self._images.metric_keys)


class StoredImages(Sequence[StoredImage]):
    """The audit's images, sorted by path, as compact per-image arrays.

    What the analysis needs of every image (names as indices into one table of names,
    ``correct`` as -1/0/1, the map's shard and row, the scores), and not the pass's record
    dicts: at 10,000 images the dicts held ~20 MiB, these arrays well under 2 MiB (the paths
    and keys, which ``audit.json`` lists, stay strings). ``images[p]`` is a
    :class:`StoredImage` whose ``record`` is read from the arrays when used.
    """

    def __init__(self, columns: dict[str, Any], names: list[Any], shards: list[str],
                 metric_keys: list[str]) -> None:
        self.paths: list[str] = columns["path"]
        self.keys: list[str] = columns["key"]
        self._names = names
        self._shards = shards
        self.metric_keys = metric_keys
        self._columns = columns

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, at: int) -> StoredImage: ...

    @overload
    def __getitem__(self, at: slice) -> list[StoredImage]: ...

    def __getitem__(self, at: int | slice) -> StoredImage | list[StoredImage]:
        if isinstance(at, slice):
            return [self[k] for k in range(*at.indices(len(self)))]
        at = range(len(self))[at]  # negative positions, and IndexError past the end
        c = self._columns
        true_row = int(c["true_row"][at])
        return StoredImage(_Record(self, at), self._shards[c["shard"][at]], int(c["row"][at]),
                           None if true_row < 0 else true_row)

    def _name(self, index: int) -> Any:
        return None if index < 0 else self._names[index]

    def field(self, at: int, name: str) -> Any:
        """One field of image ``at``'s record, as the pass wrote it."""
        c = self._columns
        if name in ("path", "key"):
            return c[name][at]
        if name in ("label", "predicted"):
            return self._name(int(c[name][at]))
        if name in ("predicted_index", "row"):
            return int(c[name][at])
        if name == "true_row":
            true_row = int(c["true_row"][at])
            return None if true_row < 0 else true_row
        if name == "probability":
            return float(c["probability"][at])
        if name == "correct":
            correct = int(c["correct"][at])
            return None if correct < 0 else bool(correct)
        if name == "top5":
            return [[self._names[int(i)], float(v)]
                    for i, v in zip(c["top5_name"][at], c["top5_value"][at]) if i >= 0]
        if name == "metrics" and self.metric_keys:
            return {k: self.metric(at, k) for k in self.metric_keys}
        raise KeyError(name)

    def metric(self, at: int, key: str) -> float | None:
        """Image ``at``'s stored score of metric ``key`` (None where undefined or missing)."""
        values = self._columns["metrics"].get(key)
        value = np.nan if values is None else float(values[at])
        return None if np.isnan(value) else value


def stored_images(store: ResultStore, keys: Iterable[str]) -> StoredImages:
    """The records of ``keys`` (the current dataset's images), sorted by path.

    Read shard by shard into compact columns (:class:`StoredImages`); the records
    themselves are not kept.
    """
    wanted = set(keys)
    seen: set[str] = set()
    names: dict[Any, int] = {}
    shards: list[str] = []
    paths: list[str] = []
    found_keys: list[str] = []
    ints = {name: array("q") for name in ("label", "predicted", "predicted_index", "correct",
                                          "shard", "row", "true_row")}
    probability = array("d")
    top_names: list[array] = []
    top_values: list[array] = []
    metrics: dict[str, array] = {}

    def index(name: Any) -> int:
        return -1 if name is None else names.setdefault(name, len(names))

    for shard in store.shards():
        for record in store.shard_records(shard):
            key = record.get("key")
            if key not in wanted or key in seen:
                continue
            seen.add(key)
            if not shards or shards[-1] != shard.name:
                shards.append(shard.name)
            count = len(paths)
            paths.append(record["path"])
            found_keys.append(key)
            ints["label"].append(index(record["label"]))
            ints["predicted"].append(index(record["predicted"]))
            ints["predicted_index"].append(record["predicted_index"])
            correct = record["correct"]
            ints["correct"].append(-1 if correct is None else int(bool(correct)))
            ints["shard"].append(len(shards) - 1)
            ints["row"].append(record["row"])
            true_row = record["true_row"]
            ints["true_row"].append(-1 if true_row is None else true_row)
            probability.append(record["probability"])
            top = record.get("top5") or []
            top_names.append(array("q", [index(n) for n, _ in top]))
            top_values.append(array("d", [v for _, v in top]))
            for k, v in (record.get("metrics") or {}).items():
                if k not in metrics:
                    metrics[k] = array("d", [np.nan] * count)
                metrics[k].append(np.nan if v is None else v)
            for column in metrics.values():
                if len(column) == count:  # a key this record lacks
                    column.append(np.nan)
    del seen
    order = np.array(sorted(range(len(paths)), key=lambda i: (paths[i], found_keys[i])),
                     dtype=np.int64)
    width = max((len(t) for t in top_names), default=0)
    top_index = np.full((len(paths), width), -1, np.int32)
    top_value = np.zeros((len(paths), width), np.float64)
    for k, (n, v) in enumerate(zip(top_names, top_values)):
        top_index[k, :len(n)] = n
        top_value[k, :len(v)] = v
    del top_names, top_values
    columns: dict[str, Any] = {
        "path": [paths[i] for i in order], "key": [found_keys[i] for i in order],
        **{name: np.frombuffer(values, np.int64)[order].astype(
            np.int8 if name == "correct" else np.int32 if name != "predicted_index"
            else np.int64) for name, values in ints.items()},
        "probability": np.frombuffer(probability, np.float64)[order],
        "top5_name": top_index[order], "top5_value": top_value[order],
        "metrics": {k: np.frombuffer(v, np.float64)[order] for k, v in metrics.items()},
    }
    return StoredImages(columns, list(names), shards, list(metrics))


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

    def mean_map(self, images: Sequence[StoredImage], chunk: int = 1024) -> np.ndarray:
        """The mean of the sum-normalised maps of ``images``, read ``chunk`` at a time."""
        total = None
        for start in range(0, len(images), chunk):
            part = images[start:start + chunk]
            block = mean_map(self.stack(part, np.float32)) * len(part)
            total = block if total is None else total + block
        return np.zeros((1, 1)) if total is None else total / len(images)

    def features(self, images: Sequence[StoredImage]) -> FeatureRows | None:
        """The pooled activations of ``images`` ``(N, D)`` float32, read from the
        memory-mapped store when indexed (:class:`FeatureRows`), or None when the store has
        none (written before convlens 10, or by a model without a feature layer)."""
        if not len(images):
            return None
        try:
            for shard in {image.shard for image in images}:
                self._array(shard, "features")
        except (FileNotFoundError, OSError):
            return None
        return FeatureRows(self, images)

    def concepts(self, images: Sequence[StoredImage]) -> tuple[np.ndarray, np.ndarray] | None:
        """The recorded channel relevances ``(N, C)`` float32 and hottest positions ``(N, C)``
        uint16 of ``images``, or None when the store has none (an audit without concepts).
        Held in memory: ``N x C`` floats (docs/architecture.md, "Concepts")."""
        if not len(images):
            return None
        try:
            first = self._array(images[0].shard, "concepts")
            for shard in {image.shard for image in images}:
                self._array(shard, "concepts")
                self._array(shard, "concept_at")
        except (FileNotFoundError, OSError):
            return None
        relevances = np.empty((len(images), first.shape[1]), np.float32)
        at = np.empty((len(images), first.shape[1]), np.uint16)
        for k, image in enumerate(images):
            relevances[k] = self._array(image.shard, "concepts")[image.row]
            at[k] = self._array(image.shard, "concept_at")[image.row]
        return relevances, at


@dataclass
class ConceptData:
    """What the analysis knows of the audit's concepts: the layer, the recorded relevances
    and hottest positions, their shares, and the outlier channels (the DORA-like route)."""

    layer: str
    relevances: np.ndarray
    at: np.ndarray
    shares: np.ndarray
    outliers: list[Any]


def concept_data(images: Sequence[StoredImage], reader: MapReader, layer: str | None
                 ) -> ConceptData | None:
    """The audit's concepts (None without them): shares and outlier channels, whose classes
    are the labels (the predicted classes where an image has none)."""
    found = reader.concepts(images) if layer else None
    if found is None or layer is None:
        return None
    relevances, at = found
    shares = relevance_shares(relevances)
    classes = [i.record["label"] if i.record["label"] is not None else i.record["predicted"]
               for i in images]
    return ConceptData(layer, relevances, at, shares, outlier_concepts(shares, classes))


class FeatureRows:
    """The pooled activations of an audit's images, rows read from the memory-mapped store
    when indexed (``rows[positions]``, ``np.asarray(rows)`` for all of them): the strategy
    search reads a capped sample, and the other images chunk by chunk
    (:func:`convlens.auditing.strategies.mistake_directions`)."""

    def __init__(self, reader: MapReader, images: Sequence[StoredImage]) -> None:
        self._reader = reader
        self._images = images
        first = images[0]
        width = reader._array(first.shard, "features").shape[1]
        self.shape = (len(images), width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        positions = np.arange(self.shape[0])[index]
        out = np.empty((len(positions), self.shape[1]), np.float32)
        for k, position in enumerate(positions.tolist()):
            image = self._images[position]
            out[k] = self._reader._array(image.shard, "features")[image.row]
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype, copy=False)


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


def group_field(group_by: str) -> str:
    """The record field that names an image's group."""
    return "predicted" if group_by == "predicted" else "label"


def group_positions(images: Sequence[StoredImage], group_by: str) -> dict[str, list[int]]:
    """Positions of the images of each group (predicted class or label), by name."""
    field = group_field(group_by)
    groups: dict[str, list[int]] = defaultdict(list)
    for position, image in enumerate(images):
        name = image.record[field]
        if name is not None:
            groups[name].append(position)
    return dict(groups)


def cluster_groups(images: Sequence[StoredImage], reader: MapReader,
                   groups: dict[str, list[int]], *, options: dict[str, Any],
                   progress: ProgressCallback | None = None) -> dict[str, GroupClusters]:
    """SpRAy per group at several resolutions (:func:`convlens.auditing.groups.cluster_group`);
    one group's maps in memory at a time."""
    found: dict[str, GroupClusters] = {}
    emit(progress, "cluster", 0, len(groups))
    for done, name in enumerate(sorted(groups), start=1):
        members = groups[name]
        maps = reader.stack([images[p] for p in members], np.float32)
        correct = [images[p].record["correct"] for p in members]
        found[name] = cluster_group(name, maps, correct, options=options)
        del maps  # freed before the next group is read
        emit(progress, "cluster", done, len(groups), name)
    return found


def _known(images: Sequence[StoredImage], positions: Sequence[int]) -> np.ndarray:
    return np.array([np.nan if images[p].record["correct"] is None
                     else float(images[p].record["correct"]) for p in positions])


def find_strategies(images: Sequence[StoredImage], reader: MapReader,
                    groups: dict[str, list[int]], clustered: dict[str, GroupClusters], *,
                    group_by: str, layer: str | None, seed: int = 0,
                    progress: ProgressCallback | None = None,
                    concepts: ConceptData | None = None
                    ) -> tuple[list[Strategy], dict[str, Any]]:
    """Cross-class strategies (what the mistakes share, :mod:`convlens.auditing.strategies`)
    and every per-group cluster not held by one of them, ranked together by suspicion.

    Returns the ranked strategies and the search's record for ``audit.json``
    (``strategy_search``: the layer, every candidate's AUC and error rate under the key
    ``rounds``, why it stopped).
    """
    emit(progress, "strategies", 0, 1)
    clusters = [(name, cid, np.array(inside))  # (group, id, positions)
                for name, found in sorted(clustered.items())
                for cid, inside in enumerate(found.member_positions(groups[name]))]
    field = group_field(group_by)
    features = reader.features(images) if layer is not None else None
    if features is None:
        search = Search([], "the store holds no features (an audit written before convlens "
                            "10, or a model without a feature layer)")
    else:
        concept_sets = [(o.channel, o.positions) for o in concepts.outliers] if concepts \
            else []
        search = mistake_directions(features, [i.record["correct"] for i in images], seed=seed,
                                    concept_sets=concept_sets)
    strategies: list[Strategy] = []
    held: set[tuple[str, int]] = set()
    mistakes_total = sum(i.record["correct"] is False for i in images)
    for direction in search.directions:
        positions = direction.members.tolist()
        names = Counter(images[p].record[field] for p in positions
                        if images[p].record[field] is not None)
        context = [p for name in names for p in groups.get(name, [])]
        inside = set(positions)
        rest = [images[p] for p in context if p not in inside]
        heat = reader.mean_map([images[p] for p in positions])
        score = score_members("", len(strategies), heat,
                              reader.mean_map(rest) if rest else None, len(positions),
                              _known(images, positions))
        linked = link_clusters(direction.members, clusters)
        held.update(linked)
        mistaken = [images[p].record for p in positions if images[p].record["correct"] is False]
        wrong = len(mistaken)
        strategies.append(Strategy(
            "cross-class", positions, score, heat,
            [n for n, _ in sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))], linked,
            evidence={"layer": layer, "auc": round(direction.auc, 6), "mistakes_held": wrong,
                      "of_mistakes": direction.mistakes, "all_mistakes": mistakes_total,
                      "correct_members": sum(images[p].record["correct"] is True
                                             for p in positions),
                      "threshold": round(direction.threshold, 6),
                      "mistakes_from": len({r["label"] for r in mistaken}),
                      "mistakes_into": len({r["predicted"] for r in mistaken})}))
        if concepts is not None:  # which route found it (only said with concepts)
            strategies[-1].evidence["source"] = direction.source
            if direction.channel is not None:
                strategies[-1].evidence["channel"] = direction.channel
                strategies[-1].evidence["concept_layer"] = concepts.layer
    for name, cid, positions in clusters:
        if (name, cid) in held:
            continue
        found = clustered[name]
        strategies.append(Strategy("cluster", positions.tolist(), found.scores[cid],
                                   found.means[cid], [name], [(name, cid)]))
    if concepts is not None:
        for strategy in strategies:
            attach_concepts(strategy, groups, concepts, len(images))
    emit(progress, "strategies", 1, 1)
    record = {"layer": layer, "method": "mistakes against correct predictions, logistic "
              "regression on pooled activations, cross-validated",
              "rounds": search.tried, "stopped": search.stopped}
    return rank_strategies(strategies), record


def attach_concepts(strategy: Strategy, groups: dict[str, list[int]], concepts: ConceptData,
                    count: int) -> None:
    """A strategy's concepts (:func:`convlens.auditing.concept_ranking.rank_concepts`:
    members against the rest of its groups, or against every other image when its groups
    hold no other) and the words that name them."""
    inside = set(strategy.positions)
    rest = sorted({p for name in strategy.groups for p in groups.get(name, [])} - inside)
    named_rest = bool(rest)
    if not rest:
        rest = [p for p in range(count) if p not in inside]
    strategy.concepts = rank_concepts(concepts.shares, strategy.positions, rest)
    strategy.concept_words = concept_sentence(strategy.concepts, concepts.layer,
                                              strategy.groups, named_rest)


def concept_entries(strategy: Strategy, images: Sequence[StoredImage],
                    concepts: ConceptData) -> list[dict[str, Any]]:
    """``strategies[].concepts``: per concept its figures and its reference images (the
    audit's top images of the recorded column, with the hottest position's flat index and
    the relevance)."""
    entries = []
    for concept in strategy.concepts or []:
        references = [{"path": images[p].record["path"],
                       "position": int(concepts.at[p, concept.channel]),
                       "relevance": _r(concepts.relevances[p, concept.channel])}
                      for p in reference_images(concepts.relevances, concept.channel)]
        entries.append({**concept.to_dict(concepts.layer), "references": references})
    return entries


def check_strategies(images: Sequence[StoredImage], strategies: Sequence[Strategy],
                     causal: CausalRunner | None, *, checks: int, seed: int,
                     progress: ProgressCallback | None = None) -> list[Strategy]:
    """The causal check of the ``checks`` most suspicious strategies (of 2+ images), stored
    on them (``strategy.check``); returns the ranking with the checked strategies whose
    region gives most of their mistakes their labelled class back moved to the front (in
    their order): covering the evidence undoes the mistakes, the most direct proof that it
    caused them (:meth:`convlens.auditing.causal.CausalResult.restores`)."""
    candidates = [s for s in strategies if s.score.size >= 2][:checks] if causal else []
    emit(progress, "check", 0, len(candidates))
    for done, strategy in enumerate(candidates, start=1):
        strategy.check = causal([images[p] for p in strategy.positions],
                                np.asarray(strategy.heat, dtype=np.float64), seed + done)
        emit(progress, "check", done, len(candidates), ", ".join(strategy.groups[:3]))
    confirmed = [s for s in candidates if getattr(s.check, "restores", lambda: False)()]
    first = {id(s) for s in confirmed}
    return confirmed + [s for s in strategies if id(s) not in first]


def _map_rows(heat: np.ndarray) -> list[list[float | None]]:
    return [[_r(v) for v in row] for row in np.asarray(heat)]


def _check_fields(check: Any) -> dict[str, Any]:
    if check is None:
        return {}
    fields = {"flip_rate": _r(check.flip_rate), "random_flip_rate": _r(check.random_flip_rate),
              "causal": check.sentence(), "checked_members": check.members}
    if hasattr(check, "to_dict"):
        fields["causal_check"] = check.to_dict()
    return fields


def strategy_entry(rank: int, strategy: Strategy, images: Sequence[StoredImage],
                   keys: Sequence[str], concepts: ConceptData | None = None) -> dict[str, Any]:
    """One ``strategies`` entry of ``audit.json``."""
    score = strategy.score
    entry = {"id": rank, "kind": strategy.kind, "groups": strategy.groups,
             "clusters": [[g, c] for g, c in strategy.clusters],
             "members": [images[p].record["path"] for p in strategy.positions],
             "size": score.size, "error_rate": _r(score.error_rate),
             "suspicion": _r(score.suspicion), "why": strategy.why(),
             "flip_rate": None, "random_flip_rate": None, "causal": None,
             "concentration": _r(score.concentration), "isolation": _r(score.isolation),
             "support_weight": _r(score.support), "half_mass_area": _r(score.area),
             "mean_map": _map_rows(strategy.heat)}
    if strategy.evidence is not None:
        entry["evidence"] = strategy.evidence
    if concepts is not None:
        entry["concepts"] = concept_entries(strategy, images, concepts)
        entry["concept_words"] = strategy.concept_words
    entry.update(_check_fields(strategy.check))
    if keys:
        entry["metrics"] = {k: mean_of([images[p].record for p in strategy.positions], k)
                            for k in keys}
    return entry


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
    suspicion's parts and the causal figures, per class the SpRAy steps and ``resolution``
    (the eigengap's choice, how clear it was, the k kept). convlens 10: ``strategies``
    ``[{"id", "kind", "groups", "clusters": [[class, id]], "members", "size", "error_rate",
    "suspicion", "why", "flip_rate", "random_flip_rate", "causal", "causal_check", "evidence",
    ...}]`` (most suspicious first; cross-class strategies and the per-group clusters they do
    not hold) and ``strategy_search`` (how the cross-class search went). With metrics
    (``metric_cards``): top-level ``metrics`` ``{key: {"card", "mean", "ci": [low, high],
    "count", "undefined"}}`` (bootstrap 95 %), and ``metrics`` ``{key: mean}`` per image (the
    score), per class, per cluster, per strategy and per suspicious entry.

    Args:
        images: From :func:`stored_images`.
        reader: Reads their maps (and features).
        header: ``model``, ``method``, ``layer`` (and any extra fields); ``feature_layer``
            names the layer whose pooled activations the pass recorded.
        errors: Unreadable files.
        group_by: ``"predicted"`` (the decisions the model made) or ``"label"`` (the paper).
        causal: ``causal(members, mean_map, seed) -> CausalResult`` for the top strategies
            (:mod:`convlens.auditing.causal`); its ``to_dict()`` is the strategy's (and a
            checked cluster's) ``causal_check`` (sizes x infills table, Wilson intervals,
            verdict).
        checks: How many of the most suspicious strategies get the causal check.
        spray_options: Passed to :func:`~convlens.auditing.spray.spray`.
        metric_cards: ``{key: card}`` of the metrics scored in the pass
            (:func:`convlens.auditing.scoring.card`); None: no metric fields.
    """
    groups = group_positions(images, group_by)
    options = {"tsne": False, "seed": seed, **(spray_options or {})}
    clustered = cluster_groups(images, reader, groups, options=options, progress=progress)
    concepts = concept_data(images, reader, (header.get("concepts") or {}).get("layer"))
    strategies, search = find_strategies(images, reader, groups, clustered, group_by=group_by,
                                         layer=header.get("feature_layer"), seed=seed,
                                         progress=progress, concepts=concepts)
    strategies = check_strategies(images, strategies, causal, checks=checks, seed=seed,
                                  progress=progress)
    if concepts is not None:
        header = {**header, "concepts": {
            **header["concepts"], "channels": int(concepts.shares.shape[1]),
            "outliers": [{"channel": o.channel, "images": len(o.positions),
                          "held": _r(o.held), "classes": o.classes}
                         for o in concepts.outliers]}}
    return audit_content(images, groups, clustered, strategies, search, header=header,
                         errors=errors, group_by=group_by, seed=seed, metric_cards=metric_cards,
                         concepts=concepts)


def image_rows(images: Sequence[StoredImage], cluster_of: np.ndarray, keys: Sequence[str]
               ) -> LazyList:
    """``audit.json``'s ``images``, one row made per image when written
    (:func:`convlens.files.write_json_atomic` streams a :class:`~convlens.files.LazyList`)."""

    def row(position: int) -> dict[str, Any]:
        r = images[position].record
        cluster = int(cluster_of[position])
        entry = {"path": r["path"], "label": r["label"], "predicted": r["predicted"],
                 "probability": r["probability"], "correct": r["correct"],
                 "cluster": None if cluster < 0 else cluster, "top5": r["top5"]}
        if keys:
            entry["metrics"] = {k: (r.get("metrics") or {}).get(k) for k in keys}
        return entry

    return LazyList(len(images), row)


def audit_content(images: Sequence[StoredImage], groups: dict[str, list[int]],
                  clustered: dict[str, GroupClusters], strategies: Sequence[Strategy],
                  search: dict[str, Any], *, header: dict[str, Any],
                  errors: Sequence[dict[str, str]], group_by: str, seed: int,
                  metric_cards: dict[str, dict[str, Any]] | None,
                  concepts: ConceptData | None = None) -> dict[str, Any]:
    """The ``audit.json`` content from the steps' results (schema: :func:`build_audit`)."""
    keys = list(metric_cards or {})
    names = sorted({n for i in images for n in (i.record["label"], i.record["predicted"])
                    if n is not None})
    metrics, matrix = class_metrics(images, names)
    strategy_of = {}
    for rank, strategy in enumerate(strategies, start=1):
        for pair in strategy.clusters:
            strategy_of.setdefault(pair, rank)
    cluster_of = np.full(len(images), -1, np.int32)  # per image: its cluster, -1 none
    per_class: dict[str, dict[str, Any]] = {}
    for name, found in clustered.items():
        members = found.member_positions(groups[name])
        clusters = []
        for cid, (score, inside) in enumerate(zip(found.scores, members)):
            cluster_of[inside] = cid
            clusters.append({
                "id": cid, "size": len(inside),
                "members": [images[p].record["path"] for p in inside],
                "error_rate": _r(score.error_rate), "suspicion": _r(score.suspicion),
                "flip_rate": None, "random_flip_rate": None,
                "concentration": _r(score.concentration), "isolation": _r(score.isolation),
                "support_weight": _r(score.support), "half_mass_area": _r(score.area),
                "mean_map": _map_rows(found.means[cid]),
                "strategy": strategy_of.get((name, cid)),
            })
            if keys:
                clusters[-1]["metrics"] = {k: mean_of([images[p].record for p in inside], k)
                                           for k in keys}
        per_class[name] = {"eigenvalues": [_r(v) for v in found.eigenvalues],
                           "n_clusters": found.n_clusters, "clusters": clusters,
                           "resolution": found.resolution(),
                           "spray": [s.to_dict() | {"seconds": None} for s in found.steps]}
    for strategy in strategies:  # a checked cluster carries its figures, as before
        if strategy.kind == "cluster" and strategy.check is not None:
            name, cid = strategy.clusters[0]
            per_class[name]["clusters"][cid].update(_check_fields(strategy.check))
    suspicious = []
    for score in rank_clusters([s for found in clustered.values() for s in found.scores]):
        cluster = per_class[score.group]["clusters"][score.cluster]
        entry = {"class": score.group, "cluster": score.cluster, "suspicion": _r(score.suspicion),
                 "why": score.why(), "size": score.size, "strategy": cluster["strategy"]}
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
    content = {
        **header, "group_by": group_by,
        "accuracy": _r(sum(bool(r["correct"]) for r in labelled) / len(labelled))
        if labelled else None,
        "images": image_rows(images, cluster_of, keys),
        "errors": sorted(({"path": e["path"], "reason": e["reason"]} for e in errors),
                         key=lambda e: e["path"]),
        "classes": classes,
        "confusion": {"classes": names, "matrix": matrix},
        "strategies": [strategy_entry(rank, s, images, keys, concepts)
                       for rank, s in enumerate(strategies, start=1)],
        "strategy_search": search,
        "suspicious": suspicious,
    }
    if keys:
        records = [i.record for i in images]
        content["metrics"] = {k: {"card": metric_cards[k], **summary(records, k, seed)}
                              for k in keys}
    return content
