"""Spectral Relevance Analysis (SpRAy): find the strategies a classifier uses for one class.

Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and assessing what machines really
learn" (Nature Communications 10:1096): attribution maps of the images of one class are
downsized, normalised, connected in a k-nearest-neighbour graph and clustered spectrally; the
eigengap says how many distinct strategies there are, and a cluster that looks at the
wrong thing (a watermark, a frame, a tag) is a Clever-Hans strategy.

The analysis is a pipeline of small named steps, each a pure function whose parameters are
recorded next to its result (as CoRelAy, the authors' toolbox, does with its ``Processor``
objects), so that a report can say exactly how a clustering was obtained:

1. :func:`normalise_maps` - flatten, clip negative values, divide each map by its sum.
2. :func:`reduce_dimensions` - the 64 leading principal components (speed; see below).
3. :func:`knn_affinity` - sparse symmetric k-nearest-neighbour graph (memory N*k, not N^2).
4. :func:`spectral_embedding` - leading eigenvectors of the symmetric normalised adjacency.
5. :func:`eigengap` - the number of clusters from the largest gap between eigenvalues.
6. :func:`kmeans` - k-means on the row-normalised embedding.
7. :func:`merge_similar` - clusters with nearly the same mean map become one.
8. :func:`embed_2d` - a t-SNE picture of the embedding, for display only.

CoRelAy defaults we follow (``corelay.pipeline.spectral.SpectralClustering`` and the ViRelAy
analysis script): each map divided by its sum; Euclidean distances; a k-NN graph with
``n_neighbors=10``, binary edges, symmetrised as ``(A + A.T) / 2``; the symmetric normalised
adjacency ``D^-1/2 A D^-1/2``, whose largest eigenvalues ``mu`` give the Laplacian's
smallest, reported as ``1 - mu``; 32 eigenvalues; eigenvector rows normalised to unit length;
k-means; t-SNE with perplexity 30 and early exaggeration 12.

Where we differ, and why:

* No dense distance matrix: CoRelAy computes all N^2 pairwise distances (``pdist``) and then
  sorts them; we ask scikit-learn's ``NearestNeighbors`` for the k neighbours directly
  (memory N*k), in the space of the maps' 64 leading principal components (randomised
  PCA): an exact search over 1,024 pixels alone took ~5 s for 10,000 maps on one core;
  with PCA the whole clustering takes ~2 s (BENCHMARKS.md).
* Negative relevance is clipped before normalising (CoRelAy's ``spectral`` variant sums the
  signed map): a Grad-CAM map is non-negative anyway, and for signed methods the positive
  evidence is what a strategy is made of; an all-zero map stays zero instead of NaN.
* ``eigsh(which="LA")`` (largest algebraic) instead of ``"LM"`` (largest magnitude): "LM"
  can return eigenvalues near -1 of a nearly bipartite graph, which are not smooth
  cluster indicators.
* The number of clusters comes from the eigengap (the paper's heuristic, and our need for
  an unattended audit) instead of a list given by the user; k-means then runs on the first
  ``n_clusters`` eigenvectors (Ng, Jordan & Weiss 2001) rather than on all 32.
* Clusters whose mean maps have cosine similarity >= 0.9 are merged (not in CoRelAy): on a
  k-NN graph, near-duplicate maps of different sub-populations (a watermark on circles, the
  same watermark on triangles) form separate components, and the eigengap counts each one,
  although they are one strategy.
* t-SNE runs on at most ``max_points`` (1,000) maps, a seeded subsample (the others are
  placed at their nearest sampled neighbour), with ``init="pca"`` and 500 iterations:
  scikit-learn's t-SNE of 2,000 points alone took ~11 s on one core, far more than the
  clustering, and the picture is only for display. ``spray(..., tsne=False)`` skips it.

See docs/architecture.md, "Layers and the direction data flows": this module is pure numpy /
SciPy / scikit-learn, it never touches a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from convlens.errors import ConvlensError


@dataclass
class Step:
    """One step of the pipeline as it ran: its name, its parameters and how long it took."""

    name: str
    params: dict[str, Any]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "seconds": round(self.seconds, 4)}


@dataclass
class SpRAyResult:
    """What :func:`spray` found for one group of maps.

    Attributes:
        labels: Cluster id per map, ``(N,)`` ints, clusters numbered by decreasing size.
        n_clusters: How many clusters (from the eigengap unless forced).
        eigenvalues: The smallest eigenvalues of the normalised Laplacian, ascending
            (``1 - mu`` of the normalised adjacency): near-zero values count the components.
        embedding: The row-normalised spectral embedding ``(N, n_eigval)``.
        coords: 2-D coordinates for display ``(N, 2)``, or ``None`` when switched off.
        steps: Every step with its parameters, in order.
        partitions: ``{k: labels}``: the k-means partition at every resolution asked for
            (``resolutions``), numbered like ``labels``; ``labels`` is the eigengap's.
        eigengap_k: The number of clusters the eigengap chose (before merging).
        eigengap_jump: How clear that choice was: ``lambda_{k+1} / lambda_k`` at the largest
            gap (large: a clear jump; near 1: no structure), ``None`` for tiny groups.
    """

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    embedding: np.ndarray
    coords: np.ndarray | None
    steps: list[Step] = field(default_factory=list)
    partitions: dict[int, np.ndarray] = field(default_factory=dict)
    eigengap_k: int = 1
    eigengap_jump: float | None = None

    def sizes(self) -> list[int]:
        """Members per cluster, by cluster id."""
        return np.bincount(self.labels, minlength=self.n_clusters).tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-map arrays except the labels)."""
        return {"n_clusters": self.n_clusters, "eigenvalues": [float(v) for v in self.eigenvalues],
                "sizes": self.sizes(), "steps": [s.to_dict() for s in self.steps]}


def _as_maps(maps: np.ndarray) -> np.ndarray:
    array = np.asarray(maps)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ConvlensError(
            f"SpRAy needs a stack of maps (N, H, W) or (N, D) with N >= 1, got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ConvlensError(f"SpRAy needs numeric maps, got dtype {array.dtype}")
    return array


def normalise_maps(maps: np.ndarray, *, clip_negative: bool = True) -> np.ndarray:
    """Flatten each map to a row and divide it by its sum (CoRelAy's ``Normalize``).

    Args:
        maps: ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, D)``, already downsized (e.g. 32x32).
        clip_negative: Set negative relevance to zero first (see the module notes).

    Returns:
        float32 ``(N, D)`` rows summing to 1; all-zero maps stay all-zero (never NaN).
    """
    array = _as_maps(maps)
    rows = array.reshape(array.shape[0], -1).astype(np.float32, copy=True)
    rows[~np.isfinite(rows)] = 0.0
    if clip_negative:
        np.maximum(rows, 0.0, out=rows)
    else:
        np.abs(rows, out=rows)
    total = rows.sum(axis=1, keepdims=True)
    np.divide(rows, total, out=rows, where=total > 0)
    return rows


def reduce_dimensions(rows: np.ndarray, *, n_components: int = 64, seed: int = 0) -> np.ndarray:
    """Project the rows onto their leading principal components (randomised PCA, seeded).

    Euclidean distances between 1,024-pixel maps are dominated by the few directions in
    which the maps vary; 64 components keep those and make the neighbour search ~10x
    cheaper. Rows are returned unchanged when they already have few dimensions or there are
    few of them.
    """
    return fit_projection(rows, n_components=n_components, seed=seed)(rows)


def fit_projection(rows: np.ndarray, *, n_components: int = 64, seed: int = 0
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """The projection :func:`reduce_dimensions` applies, fitted on ``rows``, as a function
    that also projects other rows (the maps left out of a subsample)."""
    n, d = rows.shape
    if d <= n_components or n <= n_components:
        return lambda other: other
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(rows)
    return lambda other: pca.transform(other).astype(np.float32, copy=False)


NEIGHBOURS = ("exact", "nndescent")
"""Neighbour searches for the k-NN graph: brute force (scikit-learn) or NN-descent."""


def check_neighbours(neighbours: str) -> None:
    """Refuse an unknown neighbour search (callers check before any work is done)."""
    if neighbours not in NEIGHBOURS:
        raise ConvlensError(f"unknown neighbour search {neighbours!r}; valid: "
                            f"{', '.join(NEIGHBOURS)}")


def nearest_neighbours(rows: np.ndarray, k: int, *, neighbours: str = "exact", seed: int = 0
                       ) -> np.ndarray:
    """Indices ``(N, k)`` of each row's ``k`` nearest other rows (Euclidean), nearest first.

    ``"exact"``: scikit-learn's brute-force search, N^2 d work (docs/capacity.md: 85 s at
    100,000 rows, about 3 h at 1,000,000, one core). ``"nndescent"``: NN-descent (Dong,
    Moses & Li 2011) from pynndescent (``pip install 'convlens[scale]'``), about N^1.2;
    recall 1.000 on the synthetic maps of docs/capacity.md, an approximation in general.
    """
    if neighbours == "exact":
        from sklearn.neighbors import NearestNeighbors

        index = NearestNeighbors(n_neighbors=k).fit(rows)
        return index.kneighbors(return_distance=False)  # X=None: excludes each point itself
    check_neighbours(neighbours)
    try:
        from pynndescent import NNDescent
    except ImportError:
        raise ConvlensError("neighbours='nndescent' needs pynndescent: pip install "
                            "'convlens[scale]' (or use neighbours='exact')") from None
    graph, _ = NNDescent(rows, n_neighbors=k + 1, random_state=seed, n_jobs=1,
                         low_memory=True).neighbor_graph
    out = np.empty((rows.shape[0], k), dtype=np.int64)
    for i, row in enumerate(graph):
        others = row[(row != i) & (row >= 0)]
        out[i] = others[:k] if len(others) >= k else np.resize(others, k)
    return out


def knn_affinity(rows: np.ndarray, *, n_neighbors: int = 10, neighbours: str = "exact",
                 seed: int = 0) -> sparse.csr_matrix:
    """Sparse symmetric k-NN graph: ``(A + A.T) / 2`` with A[i, j] = 1 for j among i's k nearest.

    Self-loops are excluded; ``n_neighbors`` is capped at ``N - 1``. The result has at most
    ``2 * N * k`` stored entries, never N^2. ``neighbours`` chooses the search
    (:func:`nearest_neighbours`).
    """
    n = rows.shape[0]
    k = min(int(n_neighbors), n - 1)
    if k < 1:
        return sparse.csr_matrix((n, n), dtype=np.float64)
    found = nearest_neighbours(rows, k, neighbours=neighbours, seed=seed)
    directed = sparse.csr_matrix((np.ones(n * k), found.ravel(), np.arange(0, n * k + 1, k)),
                                 shape=(n, n))
    directed.sum_duplicates()
    directed.data[:] = 1.0  # a repeated neighbour (padding) is one edge
    affinity = (directed + directed.T) * 0.5
    return sparse.csr_matrix(affinity, dtype=np.float64)


def spectral_embedding(affinity: sparse.spmatrix, *, n_eigval: int = 32, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenvalues of the normalised Laplacian and their row-normalised eigenvectors.

    ``L = I - D^-1/2 A D^-1/2``; we compute the largest eigenvalues ``mu`` of the normalised
    adjacency with ARPACK (``scipy.sparse.linalg.eigsh``, ``which="LA"``) and return
    ``1 - mu`` ascending. Small graphs (N <= 64) use a dense ``numpy.linalg.eigh``.

    Returns:
        ``(eigenvalues (m,), embedding (N, m))`` with ``m = min(n_eigval, N)``.
    """
    n = affinity.shape[0]
    if n == 1:
        return np.zeros(1), np.ones((1, 1))
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    scale = sparse.diags(inv_sqrt)
    adjacency = (scale @ affinity @ scale).tocsr()
    m = max(1, min(int(n_eigval), n))
    if n <= 64 or m >= n - 1:
        values, vectors = np.linalg.eigh(adjacency.toarray())
        values, vectors = values[::-1][:m], vectors[:, ::-1][:, :m]
    else:
        values, vectors = _largest_eigenpairs(adjacency, m, seed)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
    eigenvalues = np.clip(1.0 - values, 0.0, 2.0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    embedding = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return eigenvalues, embedding


DENSE_FALLBACK = 6000
"""Largest graph whose spectrum is computed densely when ARPACK fails (~290 MB at float64)."""


def _largest_eigenpairs(adjacency: sparse.csr_matrix, m: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest eigenpairs of a symmetric sparse matrix, robust to degenerate spectra.

    ARPACK (``eigsh``) first, at machine precision: with a looser tolerance it returns one
    vector per repeated eigenvalue and silently drops the copies (a ring's pairs, components).
    Highly repeated eigenvalues (disconnected cliques) can stop it ("no shifts could be
    applied"), depending on rounding in threaded BLAS; then it is retried with a larger
    Krylov space and another start, and finally solved densely when the graph is small enough.
    """
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

    n = adjacency.shape[0]
    rng = np.random.default_rng(seed)
    for ncv in (None, min(n - 1, max(4 * m + 20, 40))):
        try:
            return eigsh(adjacency, k=m, which="LA", v0=rng.uniform(-1.0, 1.0, n), tol=0,
                         ncv=ncv)
        except (ArpackError, ArpackNoConvergence):
            continue
    if n > DENSE_FALLBACK:
        raise ConvlensError(f"the spectral step did not converge on a graph of {n} maps (ARPACK "
                            "failed twice); try neighbours='nndescent' or a smaller "
                            "max_cluster_maps")
    values, vectors = np.linalg.eigh(adjacency.toarray())
    return values[::-1][:m], vectors[:, ::-1][:, :m]


def eigengap(eigenvalues: np.ndarray, *, max_clusters: int = 8, min_jump: float = 3.0) -> int:
    """The number of clusters: the ``k`` in ``[1, max_clusters]`` with the largest gap
    ``lambda_{k+1} - lambda_k`` (eigenvalues ascending from ``lambda_1 ~ 0``).

    A graph made of c disconnected components has c zero eigenvalues and then a jump, so the
    answer is c. A k-NN graph of one smooth blob has small eigenvalues that grow steadily
    (``~k^2`` along a one-dimensional manifold), so its largest gap is merely the last one
    considered; we accept ``k`` only where the spectrum jumps, ``lambda_{k+1} >= min_jump *
    lambda_k``, and answer 1 otherwise. (An absolute threshold on the gap does not work: the
    eigenvalues of a large k-NN graph are all small.)
    """
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    limit = min(int(max_clusters), len(values) - 1)
    if limit < 1:
        return 1
    gaps = np.diff(values[: limit + 1])  # gaps[i] = lambda_{i+2} - lambda_{i+1} -> k = i + 1
    k = int(np.argmax(gaps)) + 1
    if gaps[k - 1] <= 0 or values[k] < min_jump * max(values[k - 1], 0.0):
        return 1
    return k


def eigengap_jump(eigenvalues: np.ndarray, *, max_clusters: int = 8) -> float | None:
    """How clear the eigengap is: ``lambda_{k+1} / lambda_k`` at the largest gap over
    ``k <= max_clusters`` (``inf`` when ``lambda_k`` is 0: separate components; ``None``
    when there are too few eigenvalues). :func:`eigengap` accepts a ``k`` only above
    ``min_jump``; the audit reports the ratio instead of using it as a gate."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    limit = min(int(max_clusters), len(values) - 1)
    if limit < 1:
        return None
    gaps = np.diff(values[: limit + 1])
    k = int(np.argmax(gaps)) + 1
    low = max(values[k - 1], 0.0)
    return float("inf") if low <= 1e-9 else float(values[k] / low)


def kmeans(embedding: np.ndarray, *, n_clusters: int, seed: int = 0, n_init: int = 10
           ) -> np.ndarray:
    """k-means (scikit-learn, seeded) on the first ``n_clusters`` eigenvectors, rows renormalised.

    Returns cluster ids renumbered by decreasing cluster size (0 = the largest), ties broken
    by the smallest member index, so ids do not depend on k-means' arbitrary order.
    """
    n = embedding.shape[0]
    if n_clusters <= 1 or n <= n_clusters:
        return np.zeros(n, dtype=np.int64) if n_clusters <= 1 else np.arange(n, dtype=np.int64)
    from sklearn.cluster import KMeans

    features = embedding[:, :n_clusters]
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
    raw = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(features)
    return _renumber(raw)


def _renumber(raw: np.ndarray) -> np.ndarray:
    ids = np.unique(raw)
    first = {int(i): int(np.flatnonzero(raw == i)[0]) for i in ids}
    order = sorted(ids.tolist(), key=lambda i: (-int((raw == i).sum()), first[i]))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[int(v)] for v in raw], dtype=np.int64)


def merge_similar(labels: np.ndarray, rows: np.ndarray, *, min_cosine: float = 0.9
                  ) -> np.ndarray:
    """Merge clusters whose mean maps are nearly the same (cosine >= ``min_cosine``).

    A k-NN graph splits a tight set of near-identical maps into as many components as it has
    sub-populations (images of a watermark on circles and on triangles each form their own
    clique of neighbours), and the eigengap counts every component. Such clusters look at the
    same place: they are one strategy. Merging is transitive (union-find); ids are renumbered
    by decreasing size.
    """
    ids = np.unique(labels)
    if len(ids) < 2:
        return labels
    means = np.stack([rows[labels == i].mean(axis=0) for i in ids]).astype(np.float64)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    means = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
    similar = means @ means.T
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            if similar[a, b] >= min_cosine:
                parent[root(b)] = root(a)
    position = {int(i): k for k, i in enumerate(ids)}
    merged = np.array([root(position[int(v)]) for v in labels])
    return _renumber(merged)


def embed_2d(embedding: np.ndarray, *, max_points: int = 1000, perplexity: float = 30.0,
             early_exaggeration: float = 12.0, max_iter: int = 500, seed: int = 0
             ) -> np.ndarray:
    """t-SNE coordinates ``(N, 2)`` of the spectral embedding, for display only.

    At most ``max_points`` rows (a seeded subsample) go through t-SNE; every other row takes
    the coordinates of its nearest sampled row in the embedding. Tiny groups (N < 5) are laid
    out on their first two embedding dimensions.
    """
    n = embedding.shape[0]
    if n < 5:
        coords = np.zeros((n, 2))
        width = min(2, embedding.shape[1])
        coords[:, :width] = embedding[:, :width]
        return coords
    from sklearn.manifold import TSNE
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(sample) - 1) / 3.0),
                early_exaggeration=early_exaggeration, init="pca", max_iter=max_iter,
                random_state=seed)
    placed = tsne.fit_transform(embedding[sample])
    if len(sample) == n:
        return placed
    nearest = NearestNeighbors(n_neighbors=1).fit(embedding[sample])
    _, which = nearest.kneighbors(embedding)
    return placed[which[:, 0]]


def spray(maps: np.ndarray, *, n_neighbors: int = 10, n_eigval: int = 32, max_clusters: int = 8,
          min_jump: float = 3.0, n_clusters: int | None = None, clip_negative: bool = True,
          tsne: bool = True, tsne_max_points: int = 1000,
          pca_components: int = 64, merge_cosine: float | None = 0.9, seed: int = 0,
          neighbours: str = "exact", max_maps: int | None = None,
          resolutions: Sequence[int] = ()) -> SpRAyResult:
    """Run the SpRAy pipeline on one group of maps (e.g. all images predicted as one class).

    Args:
        maps: ``(N, H, W)`` downsized attribution maps (any float dtype, e.g. float16 32x32).
        n_neighbors: k of the k-NN graph (CoRelAy: 10).
        n_eigval: How many eigenvalues to compute and report (CoRelAy: 32).
        max_clusters: The largest number of clusters the eigengap may choose.
        min_jump: See :func:`eigengap`; without such a jump the group is one strategy.
        n_clusters: Force a number of clusters instead of the eigengap.
        clip_negative: See :func:`normalise_maps`.
        tsne: Compute 2-D display coordinates (the slowest step; off for speed).
        tsne_max_points: Subsample size for t-SNE.
        merge_cosine: See :func:`merge_similar`; ``None`` keeps k-means' clusters as they are.
        pca_components: Dimensions kept before the neighbour search (see
            :func:`reduce_dimensions`).
        seed: Seeds ARPACK's start vector, k-means and t-SNE: same input, same result.
        neighbours: ``"exact"`` or ``"nndescent"`` (:func:`nearest_neighbours`).
        max_maps: Cluster at most this many maps (a seeded subsample) and give every other
            map the majority cluster of its ``n_neighbors`` nearest sampled maps in the PCA
            space (:func:`assign_to_sample`): the spectral steps then cost the same for any
            group size, the rest is linear in N (docs/capacity.md). ``None``: all maps.
        resolutions: Also partition the group into each of these numbers of clusters
            (k-means on the same embedding, merged like the eigengap's), returned in
            ``partitions``: the audit scores every resolution instead of trusting one
            eigengap decision (docs/architecture.md, "Audit").

    Returns:
        A :class:`SpRAyResult` with every step's parameters and timing.
    """
    steps: list[Step] = []

    def run(name: str, fn: Callable[..., Any], value: Any, **params: Any) -> Any:
        start = time.perf_counter()
        out = fn(value, **params)
        steps.append(Step(name, params, time.perf_counter() - start))
        return out

    total = _as_maps(maps).shape[0]
    sample = None
    if max_maps is not None and total > int(max_maps):
        start = time.perf_counter()
        sample = np.sort(np.random.default_rng(seed).choice(total, int(max_maps), replace=False))
        steps.append(Step("subsample", {"max_maps": int(max_maps), "of": int(total),
                                        "seed": seed}, time.perf_counter() - start))
    chosen = np.asarray(maps)[sample] if sample is not None else maps
    rows = run("normalise", normalise_maps, chosen, clip_negative=clip_negative)
    start = time.perf_counter()
    project = fit_projection(rows, n_components=pca_components, seed=seed)
    reduced = project(rows)
    steps.append(Step("reduce_dimensions", {"n_components": pca_components, "seed": seed},
                      time.perf_counter() - start))
    affinity = run("knn_affinity", knn_affinity, reduced, n_neighbors=n_neighbors,
                   neighbours=neighbours, seed=seed)
    eigenvalues, embedding = run("spectral_embedding", lambda a, **p: spectral_embedding(a, **p),
                                 affinity, n_eigval=n_eigval, seed=seed)
    if n_clusters is None:
        count = run("eigengap", eigengap, eigenvalues, max_clusters=max_clusters,
                    min_jump=min_jump)
    else:
        count = int(n_clusters)
        steps.append(Step("eigengap", {"forced": count}))
    count = max(1, min(count, rows.shape[0]))
    chosen_k = count
    labels = run("kmeans", kmeans, embedding, n_clusters=count, seed=seed)
    if merge_cosine is not None:
        labels = run("merge_similar", lambda v, **p: merge_similar(v, rows, **p), labels,
                     min_cosine=merge_cosine)
    partitions: dict[int, np.ndarray] = {}
    if resolutions:
        start = time.perf_counter()
        for k in sorted({max(1, min(int(r), rows.shape[0])) for r in resolutions}):
            found = labels if k == count else kmeans(embedding, n_clusters=k, seed=seed)
            if merge_cosine is not None and k != count:
                found = merge_similar(found, rows, min_cosine=merge_cosine)
            partitions[k] = found
        steps.append(Step("resolutions", {"k": sorted(partitions), "seed": seed},
                          time.perf_counter() - start))
    if sample is not None:
        start = time.perf_counter()
        labels, nearest = assign_to_sample(maps, sample, labels, reduced, project,
                                           n_neighbors=n_neighbors, clip_negative=clip_negative)
        partitions = {k: assign_to_sample(maps, sample, found, reduced, project,
                                          n_neighbors=n_neighbors,
                                          clip_negative=clip_negative)[0]
                      for k, found in partitions.items()}
        embedding = embedding[nearest]
        steps.append(Step("assign_to_sample", {"n_neighbors": n_neighbors,
                                               "assigned": int(total - len(sample))},
                          time.perf_counter() - start))
    count = int(labels.max()) + 1
    coords = None
    if tsne:
        coords = run("tsne", embed_2d, embedding, max_points=tsne_max_points, seed=seed)
    return SpRAyResult(labels=labels, n_clusters=count, eigenvalues=eigenvalues,
                       embedding=embedding, coords=coords, steps=steps, partitions=partitions,
                       eigengap_k=chosen_k,
                       eigengap_jump=eigengap_jump(eigenvalues, max_clusters=max_clusters))


def assign_to_sample(maps: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray,
                     sample_reduced: np.ndarray, project: Callable[[np.ndarray], np.ndarray],
                     *, n_neighbors: int = 10, clip_negative: bool = True, chunk: int = 8192
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Clusters for every map from a clustered subsample: the majority cluster among each
    map's ``n_neighbors`` nearest sampled maps (ties: the nearest one's), in the sample's PCA
    space; sampled maps keep their own.

    Maps are normalised and projected ``chunk`` at a time, so memory is the sample plus one
    chunk, whatever N. Returns ``(labels (N,), nearest sampled position (N,))``; the second
    gives every map its nearest sampled map's embedding row.
    """
    from sklearn.neighbors import NearestNeighbors

    maps = np.asarray(maps)
    total = maps.shape[0]
    k = max(1, min(int(n_neighbors), len(sample)))
    index = NearestNeighbors(n_neighbors=k).fit(sample_reduced)
    labels = np.empty(total, dtype=np.int64)
    nearest = np.empty(total, dtype=np.int64)
    positions = np.arange(len(sample))
    labels[sample], nearest[sample] = sample_labels, positions
    others = np.setdiff1d(np.arange(total), sample, assume_unique=True)
    n_labels = int(sample_labels.max()) + 1
    for first in range(0, len(others), chunk):
        which = others[first:first + chunk]
        rows = normalise_maps(maps[which], clip_negative=clip_negative)
        found = index.kneighbors(project(rows), return_distance=False)
        votes = np.zeros((len(which), n_labels), dtype=np.int64)
        np.add.at(votes, (np.repeat(np.arange(len(which)), k), sample_labels[found].ravel()), 1)
        best = votes.max(axis=1, keepdims=True)
        first_label = sample_labels[found[:, 0]]
        tied = votes[np.arange(len(which)), first_label] == best[:, 0]
        labels[which] = np.where(tied, first_label, votes.argmax(axis=1))
        nearest[which] = found[:, 0]
    return _renumber(labels), nearest
