"""Strategies across classes: what the model's mistakes share, wherever they were predicted.

SpRAy (:mod:`convlens.auditing.spray`) clusters one group (one predicted class) at a time, so
an artefact that pushes images into seventy classes shows up as seventy one-image pieces, or
not at all. The audit holds a signal SpRAy does not use: which predictions are wrong. Here we
ask whether the mistakes share something in the model's own representation:

1. Every image's *features* (the feature layer's activations pooled over space, mean and
   max per channel, recorded by the pass) are standardised and projected on their leading
   principal components (unsupervised, so it leaks nothing into the validation below).
2. A linear classifier (logistic regression, classes balanced) learns to tell the mistakes
   from the correct predictions. Its scores are *cross-validated* (each image scored by a
   model that never saw it, stratified folds, seeded), and their ROC AUC says how much the
   mistakes share: near 0.5, nothing; near 1, one direction tells them apart.
3. When the AUC reaches ``min_auc`` AND the images it ranks high are wrong clearly more often
   than images overall (the Wilson 95 % interval of their error rate lies above the overall
   error rate), the strategy is every image scored above the threshold
   that best separates mistakes (the F1-optimal cut of the cross-validated scores): the
   mistakes that share the direction AND the correct predictions that carry the same
   evidence (a tag on images of the class it was learned from). Images without a label are
   scored by the classifier fitted on all labelled images.
4. Step 2 runs for every candidate set of mistakes: all of them, and their k-means groups
   in the same feature space (k = 2 .. 4), since one shortcut's mistakes and another
   failure's are different things. A k-means group is a region of feature space chosen by
   looking at its mistakes, and a classifier finds any region, even in noise (on random
   features a group of 28 mistakes reached a cross-validated AUC of 0.86): its centres are
   fitted on one half of the images and it is judged on the other. Candidates that rank the
   same images (scores correlated >= 0.8) are one family; each family gives one strategy,
   from its largest set of mistakes, so two different shortcuts become two strategies (at
   most ``max_strategies``) and one shortcut is not cut into k-means fragments.

*Where* the evidence lies is then read from the maps (the members' mean map, and the
causal check of its hot region, :mod:`convlens.auditing.causal`); per-class clusters that lie
mostly inside a strategy are linked to it (:func:`link_clusters`).

See docs/architecture.md, "Audit": pure numpy and scikit-learn; it never touches a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlens.auditing.causal import wilson as interval
from convlens.auditing.suspicion import ClusterScore

MIN_MISTAKES = 8
"""Fewer mistakes than this (left to explain) are not looked at: nothing to cross-validate."""
MIN_AUC = 0.8
"""The cross-validated AUC a direction needs before its images are called one strategy."""
MAX_STRATEGIES = 3
MAX_MISTAKE_GROUPS = 4
SAME_EVIDENCE = 0.8
"""Candidate directions whose scores correlate this much are one evidence (one family)."""
COMPONENTS = 64
FOLDS = 5
LINK_SHARE = 0.5
"""A per-class cluster belongs to a strategy when at least this share of it is inside."""
MAX_SEARCH_IMAGES = 8192
"""The search fits on at most this many images (:func:`search_sample`): its memory stays
flat past it (docs/capacity.md); the other images are scored chunk by chunk."""
SCORE_CHUNK = 4096


@dataclass
class Direction:
    """One direction the mistakes share, and the images it ranks high.

    Attributes:
        members: Positions (into the features given) of the strategy's images, ascending.
        auc: Cross-validated ROC AUC of mistakes against correct predictions.
        mistakes: How many mistakes the search was given in this round.
        threshold: The cut on the scores.
        scores: Every image's score (cross-validated for labelled images).
    """

    members: np.ndarray
    auc: float
    mistakes: int
    threshold: float
    scores: np.ndarray = field(repr=False)
    source: str = "mistakes"
    channel: int | None = None


@dataclass
class Search:
    """What :func:`mistake_directions` found, and why it stopped."""

    directions: list[Direction]
    stopped: str
    tried: list[dict[str, Any]] = field(default_factory=list)


def _prepare(features: np.ndarray, seed: int) -> np.ndarray:
    """Standardise the features and keep their leading principal components."""
    x = np.asarray(features, dtype=np.float64)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    spread = x.std(axis=0)
    keep = spread > 1e-8
    x = (x[:, keep] - x[:, keep].mean(axis=0)) / spread[keep]
    components = min(COMPONENTS, x.shape[1], max(x.shape[0] - 1, 1))
    if x.shape[1] <= components:
        return x
    from sklearn.decomposition import PCA

    return PCA(n_components=components, svd_solver="randomized",
               random_state=seed).fit_transform(x)


def _classifier(seed: int):  # noqa: ANN202 - scikit-learn estimator
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000, random_state=seed)


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """Wilson 95 % interval of a proportion (:func:`convlens.auditing.causal.wilson`)."""
    return interval(successes, trials)


def _cross_validated(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(FOLDS, y.sum(), (~y).sum()))
    scores = np.empty(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        scores[test] = _classifier(seed).fit(x[train], y[train]).decision_function(x[test])
    return scores


def _best_cut(scores: np.ndarray, positive: np.ndarray) -> float:
    """The score threshold with the best F1 for ``positive`` (ties: the higher cut)."""
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(positive[order])
    taken = np.arange(1, len(scores) + 1)
    f1 = 2 * hits / (taken + positive.sum())
    best = int(np.argmax(f1))
    return float(scores[order[best]])


def _first_half(wrong: np.ndarray, known: np.ndarray, seed: int) -> np.ndarray:
    """A seeded half of the labelled images, stratified by mistakes (bool mask)."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(wrong), dtype=bool)
    for part in (np.flatnonzero(known & wrong), np.flatnonzero(known & ~wrong)):
        first[rng.permutation(part)[: (len(part) + 1) // 2]] = True
    return first


def mistake_groups(x: np.ndarray, wrong: np.ndarray, first: np.ndarray, *, seed: int,
                   min_mistakes: int, max_groups: int = MAX_MISTAKE_GROUPS
                   ) -> list[tuple[np.ndarray, bool]]:
    """Candidate sets of mistakes: all of them, and k-means groups of them (k = 2 ..
    ``max_groups``) in the prepared feature space, each of at least ``min_mistakes``;
    ``(positions, grouped)`` with ``grouped`` True for the k-means groups.

    One shortcut's mistakes (textured shapes called circle) and another failure's (clean
    circles called square, because the model never learned the circle's shape) are
    different things; one direction fitted to both mixes them. The k-means centres are fitted
    on the mistakes of the ``first`` half only, and every mistake joins its nearest centre:
    a group is a region of feature space chosen by looking at its mistakes, so only the other
    half can say whether it holds more of them than chance (:func:`mistake_directions`).
    Duplicates are dropped.
    """
    from sklearn.cluster import KMeans

    index = np.flatnonzero(wrong)
    fitted = np.flatnonzero(wrong & first)
    found = [(index, False)]
    for k in range(2, max_groups + 1):
        if len(fitted) < k * max(min_mistakes // 2, 2):
            break
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x[fitted]).predict(
            x[index])
        found.extend((index[labels == j], True) for j in range(k)
                     if (labels == j).sum() >= min_mistakes)
    unique: dict[bytes, tuple[np.ndarray, bool]] = {}
    for group, grouped in found:
        unique.setdefault(np.sort(group).tobytes(), (np.sort(group), grouped))
    return list(unique.values())


def _held_out(x: np.ndarray, positive: np.ndarray, right: np.ndarray, wrong: np.ndarray,
              first: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """A k-means group judged on the half its centres never saw: the direction fitted on the
    first half, its AUC on the second, and which second-half images it ranks above the
    first half's F1-optimal cut."""
    from sklearn.metrics import roc_auc_score

    train = first & (positive | right)
    test = ~first & (positive | right)
    if positive[train].sum() < 2 or positive[test].sum() < 2:
        return 0.5, np.zeros(len(positive), dtype=bool)
    model = _classifier(seed).fit(x[train], positive[train])
    cut = _best_cut(model.decision_function(x[train]), positive[train])
    judged = ~first & (right | wrong)
    scores = np.full(len(positive), -np.inf)
    scores[judged] = _decide(model, x, judged)
    auc = float(roc_auc_score(positive[test], scores[test]))
    return auc, judged & (scores >= cut)


def _enriched(judged: np.ndarray, wrong: np.ndarray, base: float, tried: list[dict[str, Any]],
              mistakes: int, grouped: bool, auc: float, source: str | None = None) -> bool:
    """Whether the images a candidate ranks high (``judged``) are wrong clearly more often than
    images overall (``base``): the Wilson interval's low end above it. Records the candidate
    in ``tried``."""
    tried.append({"mistakes": mistakes, "grouped": grouped, "auc": round(auc, 6),
                  "error_rate": round(float(wrong[judged].mean()), 6) if judged.any()
                  else None, "base_error_rate": round(base, 6)})
    if source is not None:
        tried[-1]["source"] = source
    return wilson(int((judged & wrong).sum()), int(judged.sum()))[0] > base


def mistake_directions(features: Any, correct: Sequence[bool | None], *, seed: int = 0,
                       min_mistakes: int = MIN_MISTAKES, min_auc: float = MIN_AUC,
                       max_strategies: int = MAX_STRATEGIES,
                       max_images: int | None = MAX_SEARCH_IMAGES,
                       concept_sets: Sequence[tuple[int, np.ndarray]] = ()) -> Search:
    """Find up to ``max_strategies`` directions the mistakes share (see the module notes).

    Every candidate set of mistakes (:func:`mistake_groups`) is judged honestly: all the
    mistakes by cross-validation, a k-means group on the half its centres never saw
    (:func:`_held_out`). It qualifies when its AUC reaches ``min_auc`` and the images it
    ranks high are wrong clearly more often than images overall. Qualified candidates that
    rank the same images form one family (:func:`_families`); each family gives one
    strategy, from its largest set of mistakes, keeping the images no earlier strategy holds.

    Args:
        features: ``(N, D)`` pooled activations, one row per image: an array, or rows read
            when indexed (:class:`convlens.auditing.analysis.FeatureRows`).
        correct: Per image ``True``/``False``, or ``None`` without a label.
        seed: Seeds the projection, the halves, the groups, the folds and the classifier
            (and the sample).
        max_images: Fit on at most this many images (:func:`search_sample`; None: all);
            the others are scored, chunk by chunk, like images without a label.
        concept_sets: ``(channel, image positions)`` of outlier concepts
            (:func:`convlens.auditing.concept_ranking.outlier_concepts`): the mistakes among
            each set are one more candidate (``source: "concept"``), judged on the held-out
            half like a k-means group (the set was chosen by looking at the data).
    """
    from sklearn.metrics import roc_auc_score

    n = len(correct)
    sample = search_sample(correct, max_images, seed)
    if sample is not None:  # the rest are scored as images without a label are
        outside = np.ones(n, dtype=bool)
        outside[sample] = False
        correct = [None if out else c for c, out in zip(correct, outside.tolist())]
    known = np.array([c is not None for c in correct])
    wrong = np.array([c is False for c in correct])
    if n == 0 or wrong.sum() < min_mistakes:
        return Search([], f"fewer than {min_mistakes} mistakes")
    if (known & ~wrong).sum() < min_mistakes:
        return Search([], f"fewer than {min_mistakes} correct predictions to compare with")
    x = _prepare(features, seed) if sample is None else _Projected(features, sample, seed)
    right = known & ~wrong
    base = float(wrong[known].mean())
    first = _first_half(wrong, known, seed)
    tried: list[dict[str, Any]] = []
    candidates: list[tuple[float, int, np.ndarray, np.ndarray, float, str, int | None]] = []
    sources: list[tuple[np.ndarray, bool, str, int | None]] = [
        (group, grouped, "kmeans" if grouped else "mistakes", None)
        for group, grouped in mistake_groups(x, wrong, first, seed=seed,
                                             min_mistakes=min_mistakes)]
    for channel, images in concept_sets:
        inside = np.zeros(n, dtype=bool)
        inside[np.asarray(images, dtype=np.int64)] = True
        group = np.flatnonzero(inside & wrong)
        if len(group) >= min_mistakes:
            sources.append((group, True, "concept", int(channel)))
    for group, grouped, source, channel in sources:
        positive = np.zeros(n, dtype=bool)
        positive[group] = True
        fit = right | positive
        if grouped:  # judged before its scores are computed: most groups do not qualify
            auc, judged = _held_out(x, positive, right, wrong, first, seed)
            if not _enriched(judged, wrong, base, tried, len(group), grouped, auc,
                             source if source == "concept" else None):
                continue
        scores = np.empty(n)
        scores[fit] = _cross_validated(x[fit], positive[fit], seed)
        rest = ~fit
        if rest.any():
            scores[rest] = _decide(_classifier(seed).fit(x[fit], positive[fit]), x, rest)
        cut = _best_cut(scores[fit], positive[fit])
        if not grouped:
            auc = float(roc_auc_score(positive[fit], scores[fit]))
            if not _enriched(known & (scores >= cut), wrong, base, tried, len(group), grouped,
                             auc):
                continue
        candidates.append((auc, len(group), positive, scores, cut, source, channel))
    candidates.sort(key=lambda c: (-c[0], -c[1]))
    directions, stopped = _pick_directions(candidates, n, min_auc=min_auc,
                                           max_strategies=max_strategies,
                                           min_mistakes=min_mistakes)
    if not directions:
        best = max((t["auc"] for t in tried), default=0.0)
        stopped = (f"no set of mistakes shares a direction: none reached a cross-validated "
                   f"AUC of {min_auc} with the images it ranks high wrong clearly more often "
                   f"than the {base:.0%} overall (best AUC {best:.2f})")
    return Search(directions, stopped, tried)


def _pick_directions(candidates: list[tuple[float, int, np.ndarray, np.ndarray, float, str,
                                            int | None]],
                     n: int, *, min_auc: float, max_strategies: int, min_mistakes: int
                     ) -> tuple[list[Direction], str]:
    """One strategy per family of qualified candidates (best AUC first), keeping only the
    images no earlier strategy holds; and why the search stopped."""
    taken = np.zeros(n, dtype=bool)
    directions: list[Direction] = []
    stopped = "every candidate set of mistakes was looked at"
    for family in _families([c[3] for c in candidates]):
        usable = [candidates[i] for i in family if candidates[i][0] >= min_auc]
        if not usable:
            continue
        if len(directions) == max_strategies:
            stopped = f"{max_strategies} strategies found"
            break
        # the family's largest set of mistakes with a clear direction: one shortcut's
        # mistakes, not the k-means fragments of them
        auc, size, positive, scores, cut, source, channel = max(
            usable, key=lambda c: (c[1], c[0]))
        inside = (scores >= cut) & ~taken
        own = (inside & positive).sum()
        if own < min_mistakes or own < 0.5 * positive.sum():
            continue  # its mistakes are held by a better direction already
        directions.append(Direction(np.flatnonzero(inside), auc, size, cut, scores, source,
                                    channel))
        taken |= inside
    return directions, stopped


def search_sample(correct: Sequence[bool | None], max_images: int | None, seed: int
                  ) -> np.ndarray | None:
    """The positions the search fits on when more than ``max_images`` images are labelled
    (None: all of them): every mistake up to half of ``max_images`` (a seeded sample past
    that), and a seeded sample of the correct predictions for the rest. Ascending."""
    mistakes = np.array([c is False for c in correct], dtype=bool)
    right = np.array([c is True for c in correct], dtype=bool)
    if max_images is None or mistakes.sum() + right.sum() <= max_images:
        return None
    rng = np.random.default_rng(seed)
    wrong_at, right_at = np.flatnonzero(mistakes), np.flatnonzero(right)
    if len(wrong_at) > max_images // 2:
        wrong_at = rng.choice(wrong_at, max(max_images // 2, max_images - len(right_at)),
                              replace=False)
    right_at = rng.choice(right_at, min(len(right_at), max_images - len(wrong_at)),
                          replace=False)
    return np.sort(np.concatenate([wrong_at, right_at]))


class _Projected:
    """Every image's features in the prepared space (:func:`_prepare`: standardised, leading
    principal components), fitted on the ``sample``'s rows alone: those are kept, the other
    rows are read from ``features`` and projected when indexed."""

    def __init__(self, features: Any, sample: np.ndarray, seed: int) -> None:
        self._features = features
        x = np.nan_to_num(np.asarray(features[sample], dtype=np.float64),
                          nan=0.0, posinf=0.0, neginf=0.0)
        spread = x.std(axis=0)
        self._keep = spread > 1e-8
        self._mean = x[:, self._keep].mean(axis=0)
        self._spread = spread[self._keep]
        x = (x[:, self._keep] - self._mean) / self._spread
        components = min(COMPONENTS, x.shape[1], max(x.shape[0] - 1, 1))
        self._pca = None
        if x.shape[1] > components:
            from sklearn.decomposition import PCA

            self._pca = PCA(n_components=components, svd_solver="randomized",
                            random_state=seed).fit(x)
            x = self._pca.transform(x)
        self._sampled = x
        self._at = np.full(len(features), -1, dtype=np.int64)
        self._at[sample] = np.arange(len(sample))

    def __getitem__(self, index: Any) -> np.ndarray:
        at = self._at[index]
        if (at >= 0).all():
            return self._sampled[at]
        positions = np.arange(len(self._at))[index]
        x = np.nan_to_num(np.asarray(self._features[positions], dtype=np.float64),
                          nan=0.0, posinf=0.0, neginf=0.0)
        x = (x[:, self._keep] - self._mean) / self._spread
        return x if self._pca is None else self._pca.transform(x)


def _decide(model: Any, x: Any, rows: np.ndarray) -> np.ndarray:
    """``model``'s scores of ``x[rows]`` (a boolean mask); read and projected
    :data:`SCORE_CHUNK` rows at a time when ``x`` is not an array (:class:`_Projected`)."""
    if isinstance(x, np.ndarray):
        return model.decision_function(x[rows])
    positions = np.flatnonzero(rows)
    return np.concatenate([model.decision_function(x[positions[start:start + SCORE_CHUNK]])
                           for start in range(0, len(positions), SCORE_CHUNK)])


def _families(scores: Sequence[np.ndarray], min_correlation: float = SAME_EVIDENCE
              ) -> list[list[int]]:
    """Candidates whose scores over all images correlate at least ``min_correlation``
    (single linkage) rank the same images: one evidence, found from several sets of its
    mistakes. Families are returned best AUC first (the candidates come sorted so)."""
    count = len(scores)
    if count == 0:
        return []
    matrix = np.corrcoef(np.array(scores)) if count > 1 else np.ones((1, 1))
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(count):
        for b in range(a + 1, count):
            if matrix[a, b] >= min_correlation:
                parent[root(b)] = root(a)
    families: dict[int, list[int]] = {}
    for i in range(count):
        families.setdefault(root(i), []).append(i)
    return sorted(families.values(), key=lambda f: f[0])


def link_clusters(members: np.ndarray, clusters: Sequence[tuple[str, int, np.ndarray]],
                  share: float = LINK_SHARE) -> list[tuple[str, int]]:
    """The per-class clusters ``(group, id, positions)`` with at least ``share`` of their
    images among ``members`` (positions), in the order given."""
    inside = set(np.asarray(members).tolist())
    linked = []
    for group, cid, positions in clusters:
        if len(positions) and np.mean([p in inside for p in positions]) >= share:
            linked.append((group, cid))
    return linked


@dataclass
class Strategy:
    """One entry of ``audit.json``'s ``strategies``, before it is written.

    Attributes:
        kind: ``"cross-class"`` (a direction the mistakes share) or ``"cluster"`` (one
            group's SpRAy cluster).
        positions: The members, as positions in the audit's image list (ascending).
        score: Its suspicion and the parts (:class:`~convlens.auditing.suspicion.ClusterScore`).
        heat: The members' mean map.
        groups: The groups its members fall in, most members first.
        clusters: ``(group, cluster id)`` of the per-class clusters it holds.
        evidence: For cross-class strategies: ``layer``, ``auc``, ``mistakes_held``,
            ``of_mistakes``, ``correct_members``.
    """

    kind: str
    positions: list[int]
    score: ClusterScore
    heat: np.ndarray
    groups: list[str]
    clusters: list[tuple[str, int]]
    evidence: dict[str, Any] | None = None
    check: Any = None  # a CausalResult once checked
    concepts: list[Any] | None = None  # concept_ranking.Concept, with concepts recorded
    concept_words: str = ""

    def why(self) -> str:
        """Why it is suspicious, in sentences that are each true of it (and, with concepts,
        which channels it rests on)."""
        said = self._why()
        return f"{said}; {self.concept_words}" if self.concept_words else said

    def _why(self) -> str:
        score = self.score
        if self.kind == "cluster":
            return score.why()
        ev = self.evidence or {}
        where = (f"across {len(self.groups)} groups ({_listed(self.groups)})"
                 if len(self.groups) > 1 else f"in group {_listed(self.groups)}")
        parts = [f"one strategy {where}: {score.size} images"
                 + (f", {score.error_rate:.0%} of them mistakes" if score.error_rate is not None
                    else "")]
        if ev.get("mistakes_into"):
            parts.append(f"its mistakes come from {ev.get('mistakes_from')} labelled class(es) "
                         f"and were predicted as {ev['mistakes_into']} class(es)")
        if ev.get("source") == "concept":
            parts.append(f"found through channel {ev.get('channel')} of "
                         f"{ev.get('concept_layer')}, whose relevance sits on a few images of "
                         "several classes")
        parts.append(f"the mistakes share a direction in the activations of {ev.get('layer')} "
                     f"that tells them from correct predictions (cross-validated AUC "
                     f"{ev.get('auc', 0):.2f}); it holds {ev.get('mistakes_held')} of the "
                     f"{ev.get('of_mistakes')} mistakes searched")
        if ev.get("correct_members"):
            parts.append(f"{ev['correct_members']} correct prediction(s) carry the same "
                         "evidence")
        parts.append(f"half of the members' mean relevance lies in {score.area:.1%} of the "
                     "image")
        if self.clusters:
            parts.append(f"it holds {len(self.clusters)} per-group cluster(s) "
                         f"({_listed([f'{g} {c}' for g, c in self.clusters])})")
        return "; ".join(parts)


def _listed(names: Sequence[str], most: int = 6) -> str:
    names = list(names)
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def flow(strategy: Strategy) -> float:
    """How many true classes its mistakes come from per predicted class they go to.

    Evidence that decides the class whatever the image shows (a tag the model learned as
    "circle") pulls images of several classes into one; a class the model cannot recognise
    sends its own images out instead (one true class, several predictions). Per-group
    clusters score 0 here.
    """
    ev = strategy.evidence or {}
    if strategy.kind != "cross-class" or not ev.get("mistakes_into"):
        return 0.0
    return ev.get("mistakes_from", 0) / ev["mistakes_into"]


def rank_strategies(strategies: Sequence[Strategy]) -> list[Strategy]:
    """Most suspicious first: cross-class strategies (what the mistakes share, the audit's
    strongest evidence) before per-group clusters, by :func:`flow`, then by suspicion;
    ties by group and cluster (deterministic)."""
    def key(s: Strategy) -> tuple:
        first = s.clusters[0] if s.clusters else ("", -1)
        return (s.kind != "cross-class", -flow(s), -s.score.suspicion, first[0], first[1])

    return sorted(strategies, key=key)
