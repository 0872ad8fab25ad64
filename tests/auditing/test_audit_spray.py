"""SpRAy steps, each on a case whose answer is known (docs/architecture.md, "Layers")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from convlens.auditing import spray as sp
from convlens.errors import ConvlensError


def _blobs(sizes, centres, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    maps, truth = [], []
    for k, (n, (cy, cx)) in enumerate(zip(sizes, centres)):
        for _ in range(n):
            y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
            maps.append(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0))
            truth.append(k)
    return np.array(maps, dtype=np.float16), np.array(truth)


def test_normalise_rows_sum_to_one_and_zero_maps_stay_zero():
    maps = np.zeros((3, 4, 4), np.float16)
    maps[0, 1, 1] = 2.0
    maps[1] = -1.0
    maps[1, 0, 0] = 3.0
    rows = sp.normalise_maps(maps)
    assert rows.shape == (3, 16) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(axis=1), [1.0, 1.0, 0.0])
    assert rows[1, 0] == 1.0  # negatives clipped before normalising
    assert not np.isnan(rows).any()


def test_bad_maps_raise_one_clear_error():
    with pytest.raises(ConvlensError, match="stack of maps"):
        sp.spray(np.zeros((0, 4, 4)))


def test_knn_graph_is_symmetric_sparse_and_matches_brute_force():
    rng = np.random.default_rng(1)
    rows = rng.random((60, 5)).astype(np.float32)
    graph = sp.knn_affinity(rows, n_neighbors=4)
    assert sparse.issparse(graph)
    assert graph.nnz <= 2 * 60 * 4
    assert abs(graph - graph.T).max() == 0
    assert graph.diagonal().sum() == 0
    distances = ((rows[:, None] - rows[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :4]
    directed = np.zeros((60, 60))
    directed[np.repeat(np.arange(60), 4), nearest.ravel()] = 1
    np.testing.assert_array_equal(graph.toarray(), (directed + directed.T) / 2)


def test_knn_caps_neighbours_for_tiny_groups():
    graph = sp.knn_affinity(np.eye(3, dtype=np.float32), n_neighbors=10)
    assert graph.shape == (3, 3) and graph.nnz == 6
    assert sp.knn_affinity(np.ones((1, 4), np.float32)).nnz == 0


def _cliques(sizes):
    blocks = [np.ones((n, n)) - np.eye(n) for n in sizes]
    return sparse.csr_matrix(sparse.block_diag(blocks))


@pytest.mark.parametrize("sizes", [(30, 30, 30), (40, 25), (20, 20, 20, 20, 20)])
def test_eigengap_counts_disconnected_components(sizes):
    values, embedding = sp.spectral_embedding(_cliques(sizes), n_eigval=8)
    assert np.allclose(values[: len(sizes)], 0, atol=1e-8)
    assert values[len(sizes)] > 0.5  # a clique's next eigenvalue is n/(n-1)
    assert sp.eigengap(values) == len(sizes)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0)


def test_sparse_eigensolver_agrees_with_dense():
    graph = _cliques((50, 40, 30))  # N > 64: ARPACK
    values, _ = sp.spectral_embedding(graph, n_eigval=6)
    dense = 1.0 - np.linalg.eigvalsh(
        (sparse.diags(1 / np.sqrt(graph.sum(1).A1)) @ graph @ sparse.diags(
            1 / np.sqrt(graph.sum(1).A1))).toarray())[::-1][:6]
    np.testing.assert_allclose(values, dense, atol=1e-6)


def test_eigengap_says_one_for_a_smooth_ring():
    n = 100
    ring = sparse.diags([1.0, 1.0], [1, -1], shape=(n, n)).tolil()
    ring[0, n - 1] = ring[n - 1, 0] = 1
    values, _ = sp.spectral_embedding(ring.tocsr(), n_eigval=12)
    expected = np.sort(1 - np.cos(2 * np.pi * np.arange(n) / n))[:12]
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert sp.eigengap(values) == 1


def test_kmeans_ids_are_ordered_by_size():
    labels = sp._renumber(np.array([5, 5, 2, 2, 2, 9]))
    np.testing.assert_array_equal(labels, [1, 1, 0, 0, 0, 2])


def test_merge_similar_joins_near_duplicate_clusters_only():
    rows = np.array([[1, 0, 0], [1, 0.01, 0], [0, 0, 1], [0, 0.02, 1]], np.float32)
    merged = sp.merge_similar(np.array([0, 1, 2, 3]), rows, min_cosine=0.9)
    assert merged[0] == merged[1] and merged[2] == merged[3] and merged[0] != merged[2]


def test_spray_recovers_planted_groups_and_records_its_steps():
    maps, truth = _blobs((120, 80, 50), [(4, 4), (11, 11), (4, 12)])
    result = sp.spray(maps, tsne=True, seed=0)
    assert result.n_clusters == 3
    sizes = result.sizes()
    assert sizes == sorted(sizes, reverse=True)
    for k in range(3):  # every planted group is (almost all) one cluster, a different one
        assert np.bincount(result.labels[truth == k]).max() >= 0.95 * (truth == k).sum()
    assert len({int(np.bincount(result.labels[truth == k]).argmax()) for k in range(3)}) == 3
    names = [s.name for s in result.steps]
    assert names == ["normalise", "reduce_dimensions", "knn_affinity", "spectral_embedding",
                     "eigengap", "kmeans", "merge_similar", "tsne"]
    assert result.steps[2].params == {"n_neighbors": 10, "neighbours": "exact", "seed": 0}
    assert result.coords.shape == (250, 2)
    summary = result.to_dict()
    assert summary["sizes"] == sizes and len(summary["eigenvalues"]) == 32
    again = sp.spray(maps, tsne=False, seed=0)
    np.testing.assert_array_equal(again.labels, result.labels)
    assert again.coords is None


def test_spray_on_one_blob_finds_one_strategy():
    maps, _ = _blobs((200,), [(8, 8)], spread=2.5)
    assert sp.spray(maps, tsne=False).n_clusters == 1


def test_spray_handles_tiny_groups():
    one = sp.spray(np.ones((1, 4, 4)), tsne=True)
    assert one.n_clusters == 1 and one.labels.tolist() == [0]
    three = sp.spray(np.random.default_rng(0).random((3, 4, 4)), tsne=True)
    assert len(three.labels) == 3 and three.coords.shape == (3, 2)


def test_tsne_subsample_places_every_point():
    rng = np.random.default_rng(0)
    embedding = rng.random((300, 4))
    coords = sp.embed_2d(embedding, max_points=100, seed=0)
    assert coords.shape == (300, 2) and np.isfinite(coords).all()


def test_knn_graph_is_the_brute_force_one():
    rows = np.random.default_rng(3).random((60, 5)).astype(np.float32)
    graph = sp.knn_affinity(rows, n_neighbors=4).toarray()
    distances = ((rows[:, None] - rows[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    directed = np.zeros((60, 60))
    for i, row in enumerate(np.argsort(distances, axis=1)[:, :4]):
        directed[i, row] = 1.0
    np.testing.assert_array_equal(graph, (directed + directed.T) / 2)
    with pytest.raises(ConvlensError, match="unknown neighbour search 'annoy'.*exact, nndescent"):
        sp.knn_affinity(rows, neighbours="annoy")


def test_a_subsample_clusters_like_the_whole_group_and_assigns_every_map():
    maps, truth = _blobs((1200, 800, 500), [(4, 4), (11, 11), (4, 12)])
    whole = sp.spray(maps, tsne=False, seed=0, n_clusters=3)  # 2,500 blobs touch: forced
    part = sp.spray(maps, tsne=True, seed=0, max_maps=400)
    from sklearn.metrics import adjusted_rand_score

    assert part.n_clusters == 3
    assert part.labels.shape == (2500,) and part.embedding.shape[0] == 2500
    assert adjusted_rand_score(whole.labels, part.labels) > 0.97
    assert adjusted_rand_score(truth, part.labels) > 0.97
    names = [s.name for s in part.steps]
    assert names[0] == "subsample" and "assign_to_sample" in names
    assert part.steps[0].params == {"max_maps": 400, "of": 2500, "seed": 0}
    np.testing.assert_array_equal(sp.spray(maps, tsne=False, seed=0, max_maps=400).labels,
                                  part.labels)                          # seeded
    small = sp.spray(maps[:300], tsne=False, seed=0, max_maps=400)     # under the cap: no-op
    assert "subsample" not in [s.name for s in small.steps]


def test_nndescent_finds_the_exact_graph_on_separated_maps():
    pytest.importorskip("pynndescent", reason="pip install 'convlens[scale]'")
    maps, _ = _blobs((300, 200, 100), [(4, 4), (11, 11), (4, 12)])
    reduced = sp.reduce_dimensions(sp.normalise_maps(maps))
    exact = sp.nearest_neighbours(reduced, 10)
    approximate = sp.nearest_neighbours(reduced, 10, neighbours="nndescent")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approximate)])
    assert recall > 0.95
    labels = sp.spray(maps, tsne=False, neighbours="nndescent").labels
    np.testing.assert_array_equal(labels, sp.spray(maps, tsne=False).labels)


def test_an_arpack_failure_is_retried_and_falls_back_to_a_dense_solve(monkeypatch):
    """Degenerate spectra (cliques) can stop ARPACK ("no shifts could be applied"),
    depending on threaded BLAS rounding; the embedding must still come out right."""
    import scipy.sparse.linalg as linalg

    calls = []

    def failing(*args, **kwargs):
        calls.append(kwargs.get("ncv"))
        raise linalg.ArpackError(3)

    monkeypatch.setattr(linalg, "eigsh", failing)
    values, embedding = sp.spectral_embedding(_cliques((30, 30, 30)), n_eigval=8)
    assert len(calls) == 2 and calls[1] is not None  # retried with a larger Krylov space
    assert np.allclose(values[:3], 0, atol=1e-8) and sp.eigengap(values) == 3
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0)
