"""How SpRAy's clustering of one class scales with the number of maps, and what replaces the
exact neighbour search past one node (figures go to docs/capacity.md and BENCHMARKS.md).

::

    python benchmarks/bench_clustering_scale.py                      # 10k 30k 100k maps
    python benchmarks/bench_clustering_scale.py --sizes 10000 30000 --approx-sizes 10000
    python benchmarks/bench_clustering_scale.py --probe-sizes 300000 1000000

Every measurement runs in a fresh child process (so peak memory is that measurement's own),
with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000`` (glibc keeps freed memory
instead of returning it, so the resident high-water mark is the real peak of the heap) and
``BENCH_THREADS`` (default 1) BLAS / OpenMP / numba threads, set before numpy is imported
and enforced with threadpoolctl. Each row carries the load average at its start: the
development machine is 2 shared vCPUs with other engineers' jobs on it, so wall times are
inflated; the CPU time (``time.process_time``) is given next to them.

The parent writes the maps of each N to a temporary ``.npy`` file; a child reads them whole
(one allocation of the maps' own size, so no generator temporaries sit in the heap under the
memory baseline). Three kinds of rows, one JSON line each (appended) in
``benchmarks/results/clustering_scale.jsonl``, after a ``machine`` line:

* ``exact``: ``spray(maps, tsne=False)`` on N synthetic stored maps of one class (32x32
  float16, planted strategies plus noise, see :func:`synthetic_maps`): seconds per step (the
  ``Step`` records), total wall and CPU seconds, peak resident growth (``VmHWM`` after the
  call minus ``VmRSS`` before it, after ``clear_refs``; the maps themselves are allocated
  before the baseline), the clusters found and their adjusted Rand index (ARI) against the
  planted strategies. For N up to ``--degrade-max``, off the clock: how much neighbour recall
  the clustering tolerates (:func:`degraded_graphs`).
* ``approx``: the same pipeline built from spray's own step functions, with the exact k-NN
  graph (scikit-learn ``NearestNeighbors``, brute force in 64 dimensions) replaced by
  pynndescent's NN-descent graph (Dong, Moses & Li 2011), made into the same binary
  ``(A + A.T) / 2`` affinity. Reported: per-step seconds, peak growth, the recall of the
  approximate k-NN lists against exact brute-force neighbours of a random sample of
  queries, and the ARI of its cluster labels against the exact pipeline's labels (from the
  ``exact`` row of the same N in the same run, passed through a temporary file) and against
  the planted strategies. numba's one-off compilation is paid on a 2,000-map warm-up before
  timing and reported separately (``jit_warmup_s``). All approx sizes run in one child,
  largest first (one compilation); only the first has its own memory baseline.
* ``probe``: the cost of exact brute-force k-NN at index sizes too large to run whole here:
  ``q`` random queries against an index of N random 64-dimensional float32 rows (the cost of a
  brute-force search is ``q * N * d`` arithmetic whatever the values), scaled to N queries.
  The same estimate is made inside each ``approx`` row from its recall sample, next to the
  k-NN step measured whole in the ``exact`` row, to check the scaling.

pynndescent is an optional dependency (``pip install convlens[scale]``), not one of
convlens's core dependencies: without it the ``approx`` rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _proc import reset_peak, status_kib  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "clustering_scale.jsonl"
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}
MODE_TEXT = {"near_miss": "near misses", "random": "random points"}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")


# ---- child side ---------------------------------------------------------------------------

def _limit_threads() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(os.environ.get("BENCH_THREADS", "1")))


def synthetic_maps(count: int, seed: int = 0):
    """``count`` 32x32 float16 maps of one class: four planted strategies plus noise.

    Strategies (shares 40 / 30 / 20 / 10 %): a Gaussian blob on the object at the centre, one
    at the upper left, one at the lower right (centres jittered by 2 px, widths 2-5 px), and a
    Clever-Hans "watermark" (a small bright patch in the lower-left corner plus a faint blob
    on the object). Every map gets uniform noise of 5 % of its peak, like
    benchmarks/bench_audit.py and tests/auditing. Returns ``(maps, truth)``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32].astype(np.float32)
    truth = rng.choice(4, size=count, p=[0.4, 0.3, 0.2, 0.1]).astype(np.int64)
    maps = np.empty((count, 32, 32), np.float16)
    centres = np.array([(16, 16), (8, 8), (24, 24), (16, 16)], np.float32)
    chunk = 8192
    for start in range(0, count, chunk):
        kind = truth[start:start + chunk]
        n = len(kind)
        cy = centres[kind, 0] + rng.normal(0, 2, n).astype(np.float32)
        cx = centres[kind, 1] + rng.normal(0, 2, n).astype(np.float32)
        width = rng.uniform(2, 5, n).astype(np.float32)
        blob = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
                      / (2 * width[:, None, None] ** 2))
        mark = kind == 3
        blob[mark] *= 0.3
        blob[mark, 26:30, 2:6] += 1.0 + 0.1 * rng.random((int(mark.sum()), 4, 4),
                                                        dtype=np.float32)
        blob += 0.05 * rng.random((n, 32, 32), dtype=np.float32)
        maps[start:start + n] = blob
    return maps, truth


def _knn_graph_from_lists(indices, n_neighbors: int):
    """The affinity :func:`convlens.auditing.spray.knn_affinity` builds, from neighbour lists.

    ``indices`` is ``(N, k + 1)`` as an index-on-itself query returns it (each point usually
    first in its own list). Self-references and missing entries (-1) are dropped, the first
    ``k`` others kept: ``A[i, j] = 1``, then ``(A + A.T) / 2`` as float64 CSR.
    """
    import numpy as np
    from scipy import sparse

    n = indices.shape[0]
    own = np.arange(n)[:, None]
    bad = (indices == own) | (indices < 0)
    order = np.argsort(bad, axis=1, kind="stable")  # valid first, original order kept
    kept = np.take_along_axis(indices, order, axis=1)[:, :n_neighbors]
    valid = ~np.take_along_axis(bad, order, axis=1)[:, :n_neighbors]
    rows = np.broadcast_to(own, kept.shape)[valid]
    directed = sparse.csr_matrix((np.ones(int(valid.sum())), (rows, kept[valid])), shape=(n, n))
    return sparse.csr_matrix((directed + directed.T) * 0.5, dtype=np.float64), kept


def _exact_neighbours(rows, queries, n_neighbors: int):
    """Exact k nearest neighbours (self excluded) of ``rows[queries]`` among all rows."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=n_neighbors + 1, algorithm="brute").fit(rows)
    start = time.perf_counter()
    _, found = index.kneighbors(rows[queries])
    seconds = time.perf_counter() - start
    out = np.empty((len(queries), n_neighbors), np.int64)
    for r, q in enumerate(queries):
        others = found[r][found[r] != q]
        out[r] = others[:n_neighbors]
    return out, seconds


def _load_maps(data: str):
    """The maps and planted labels the parent wrote (read whole: one allocation of the maps'
    own size, no generator temporaries left in the heap to be reused under the baseline)."""
    import numpy as np

    return np.load(os.path.join(data, "maps.npy")), np.load(os.path.join(data, "truth.npy"))


def _labels_from_graph(affinity, rows, seed: int):
    """spray's steps after the k-NN graph, with its defaults: eigsh, eigengap, k-means, merge."""
    from convlens.auditing import spray as sp

    eigenvalues, embedding = sp.spectral_embedding(affinity, n_eigval=32, seed=seed)
    n_clusters = sp.eigengap(eigenvalues, max_clusters=8, min_jump=3.0)
    labels = sp.kmeans(embedding, n_clusters=n_clusters, seed=seed)
    return sp.merge_similar(labels, rows, min_cosine=0.9)


def degraded_graphs(maps, exact_labels, fractions: list[float], seed: int
                    ) -> list[dict[str, Any]]:
    """How much neighbour recall the clustering tolerates: a fraction of the exact k-NN
    entries replaced by near misses (the (k+1)-th to 2k-th neighbours, the usual error of an
    approximate search) or by random points (the worst case); the ARI against the exact
    labels. Recall of the degraded lists is ``1 - fraction`` by construction."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import NearestNeighbors

    from convlens.auditing import spray as sp

    k = 10
    rows = sp.normalise_maps(maps)
    reduced = sp.reduce_dimensions(rows, n_components=64, seed=seed)
    found = NearestNeighbors(n_neighbors=2 * k).fit(reduced).kneighbors(
        return_distance=False)  # X=None: self excluded
    rng = np.random.default_rng(seed + 11)
    out = []
    for fraction in fractions:
        replace = rng.random((len(maps), k)) < fraction
        for mode in ("near_miss", "random"):
            if mode == "near_miss":
                other = rng.permuted(found[:, k:], axis=1)
            else:
                other = rng.integers(0, len(maps), size=(len(maps), k))
            lists = np.where(replace, other, found[:, :k])
            affinity, _ = _knn_graph_from_lists(lists, k)
            labels = _labels_from_graph(affinity, rows, seed)
            out.append({"mode": mode, "fraction": fraction,
                        "clusters": int(labels.max()) + 1,
                        "ari_vs_exact": round(float(adjusted_rand_score(exact_labels, labels)),
                                              4)})
    return out


def child_exact(data: str, seed: int, degrade: list[float] | None = None) -> dict[str, Any]:
    _limit_threads()
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from convlens.auditing.spray import spray

    spray(synthetic_maps(500, seed + 1)[0], tsne=False)  # imports and first allocations
    maps, truth = _load_maps(data)
    count = len(maps)
    load = os.getloadavg()
    base = reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    result = spray(maps, tsne=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = status_kib("VmHWM")
    np.save(os.path.join(data, "exact_labels.npy"), result.labels)
    extra = {}
    if degrade:  # off the clock and after the memory reading
        extra["degraded"] = degraded_graphs(maps, result.labels, degrade, seed)
    return {**extra, "kind": "exact", "maps": count, "loadavg": [round(v, 2) for v in load],
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "steps_s": {s.name: round(s.seconds, 3) for s in result.steps},
            "peak_growth_mib": round((peak - base) / 1024, 1),
            "maps_mib": round(maps.nbytes / 2**20, 1),
            "clusters": result.n_clusters, "sizes": result.sizes(),
            "ari_vs_planted": round(float(adjusted_rand_score(truth, result.labels)), 4)}


def child_approx(folders: list[str], seed: int, build_neighbors: int, recall_queries: int
                 ) -> list[dict[str, Any]]:
    """The pipeline with NN-descent neighbours, for each folder (largest N first) in one
    process, so numba's compilation is paid once. Only the first (largest) run has a clean
    memory baseline; later ones reuse the heap it left and report no peak."""
    _limit_threads()
    from pynndescent import NNDescent

    from convlens.auditing import spray as sp

    warm = synthetic_maps(2000, seed + 1)[0]
    sp.spray(warm[:500], tsne=False)
    start = time.perf_counter()
    warm = sp.reduce_dimensions(sp.normalise_maps(warm))
    NNDescent(warm, n_neighbors=build_neighbors, random_state=seed, n_jobs=1)
    jit = time.perf_counter() - start
    del warm
    results = []
    for position, data in enumerate(folders):
        result = _approx_one(data, seed, build_neighbors, recall_queries, NNDescent)
        result["jit_warmup_s"] = round(jit, 1)
        if position:
            result["peak_growth_mib"] = None
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def _approx_one(data: str, seed: int, build_neighbors: int, recall_queries: int,
                nndescent: Any) -> dict[str, Any]:
    import gc

    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from convlens.auditing import spray as sp

    k = 10  # spray's n_neighbors default
    gc.collect()
    maps, truth = _load_maps(data)
    count = len(maps)
    load = os.getloadavg()
    base = reset_peak()
    steps: dict[str, float] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def timed(name, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        steps[name] = round(time.perf_counter() - t, 3)
        return out

    rows = timed("normalise", sp.normalise_maps, maps)
    reduced = timed("reduce_dimensions", sp.reduce_dimensions, rows, n_components=64,
                    seed=seed)
    index = timed("nndescent", nndescent, reduced, n_neighbors=build_neighbors,
                  random_state=seed, n_jobs=1)
    lists = index.neighbor_graph[0]
    del index
    affinity, kept = timed("graph", _knn_graph_from_lists, lists, k)
    eigenvalues, embedding = timed("spectral_embedding", sp.spectral_embedding, affinity,
                                   n_eigval=32, seed=seed)
    n_clusters = timed("eigengap", sp.eigengap, eigenvalues, max_clusters=8, min_jump=3.0)
    labels = timed("kmeans", sp.kmeans, embedding, n_clusters=n_clusters, seed=seed)
    labels = timed("merge_similar", sp.merge_similar, labels, rows, min_cosine=0.9)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = status_kib("VmHWM")
    # Off the clock: recall on a sample of queries, agreement with the exact pipeline.
    rng = np.random.default_rng(seed + 7)
    queries = np.sort(rng.choice(count, size=min(recall_queries, count), replace=False))
    exact, exact_sample_s = _exact_neighbours(reduced, queries, k)
    hits = sum(len(np.intersect1d(exact[r], kept[q])) for r, q in enumerate(queries))
    out = {"kind": "approx", "maps": count, "loadavg": [round(v, 2) for v in load],
           "build_neighbors": build_neighbors,
           "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "steps_s": steps,
           "peak_growth_mib": round((peak - base) / 1024, 1),
           "clusters": int(labels.max()) + 1,
           "sizes": np.bincount(labels).tolist(),
           "recall_at_10": round(hits / (k * len(queries)), 4),
           "recall_queries": len(queries),
           "exact_knn_estimate_s": round(exact_sample_s * count / len(queries), 2),
           "ari_vs_planted": round(float(adjusted_rand_score(truth, labels)), 4)}
    labels_path = os.path.join(data, "exact_labels.npy")
    if os.path.exists(labels_path):
        exact_labels = np.load(labels_path)
        out["ari_vs_exact"] = round(float(adjusted_rand_score(exact_labels, labels)), 4)
    return out


def child_probe(count: int, queries: int, seed: int) -> dict[str, Any]:
    _limit_threads()
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    rows = rng.random((count, 64), dtype=np.float32)
    index = NearestNeighbors(n_neighbors=11, algorithm="brute").fit(rows)
    index.kneighbors(rows[:64])  # warm-up
    load = os.getloadavg()
    base = reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    index.kneighbors(rows[:queries])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = status_kib("VmHWM")
    return {"kind": "probe", "maps": count, "queries": queries,
            "loadavg": [round(v, 2) for v in load], "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "per_query_ms": round(1000 * wall / queries, 3),
            "exact_knn_estimate_s": round(wall * count / queries, 1),
            "peak_growth_mib": round((peak - base) / 1024, 1),
            "index_mib": round(rows.nbytes / 2**20, 1)}


# ---- parent side --------------------------------------------------------------------------

def _child(args: list[str], threads: int) -> list[dict[str, Any]]:
    env = {**os.environ, **ALLOCATOR_ENV, "BENCH_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.update({name: str(threads) for name in THREAD_VARS})
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env)
    results = [json.loads(line) for line in done.stdout.strip().splitlines()
               if line.startswith("{")]
    if done.returncode != 0:
        results.append({"error": done.stderr.strip().splitlines()[-1:]
                        or [f"rc {done.returncode}"], "args": args})
    return results


def _row(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error {result['args']}: {result['error']}"
    load = result["loadavg"][0]
    if result["kind"] == "probe":
        return (f"probe  {result['maps']:>8,}  {result['queries']:,} queries: "
                f"{result['per_query_ms']:.2f} ms/query -> exact k-NN of all "
                f"~{result['exact_knn_estimate_s']:,.0f} s  (index {result['index_mib']} MiB, "
                f"load {load:.1f})")
    s = result["steps_s"]
    knn = s.get("knn_affinity", s.get("nndescent", 0.0) + s.get("graph", 0.0))
    peak = result["peak_growth_mib"]
    peak_text = "    (n/a)" if peak is None else f"{peak:7.1f} MiB"
    line = (f"{result['kind']:<6} {result['maps']:>8,}  wall {result['wall_s']:7.1f}  cpu "
            f"{result['cpu_s']:7.1f}  norm {s['normalise']:5.2f}  pca "
            f"{s['reduce_dimensions']:6.2f}  knn {knn:7.2f}  eigsh "
            f"{s['spectral_embedding']:6.2f}  kmeans {s['kmeans']:5.2f}  merge "
            f"{s['merge_similar']:5.2f}  peak +{peak_text}  "
            f"clusters {result['clusters']}  ARI(planted) {result['ari_vs_planted']:.3f}  "
            f"load {load:.1f}")
    for item in result.get("degraded", []):
        line += (f"\n{'':16}{item['fraction']:.0%} of neighbours replaced by "
                 f"{MODE_TEXT[item['mode']]}: clusters {item['clusters']}, ARI(exact) "
                 f"{item['ari_vs_exact']:.4f}")
    if result["kind"] == "approx":
        ari = result.get("ari_vs_exact")
        ari_text = "n/a (no exact row of this N in the run)" if ari is None else f"{ari:.4f}"
        line += (f"\n{'':16}recall@10 {result['recall_at_10']:.4f}  ARI(exact) "
                 f"{ari_text}  jit warm-up "
                 f"{result['jit_warmup_s']} s  exact k-NN estimated from the sample "
                 f"{result['exact_knn_estimate_s']} s")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 30000, 100000],
                        help="N for the exact spray(maps, tsne=False) rows")
    parser.add_argument("--approx-sizes", type=int, nargs="*", default=None,
                        help="N for the pynndescent rows (default: the --sizes)")
    parser.add_argument("--probe-sizes", type=int, nargs="*", default=[],
                        help="index sizes for the sampled exact k-NN probe (e.g. 1000000)")
    parser.add_argument("--probe-queries", type=int, default=2000)
    parser.add_argument("--build-neighbors", type=int, default=11,
                        help="NN-descent list length (k + 1: each point finds itself)")
    parser.add_argument("--recall-queries", type=int, default=2000)
    parser.add_argument("--degrade", type=float, nargs="*", default=[0.05, 0.2],
                        help="fractions of exact neighbours replaced (exact rows up to "
                             "--degrade-max maps)")
    parser.add_argument("--degrade-max", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, what = args.child[0], args.child[1:]
        if kind == "exact":
            print(json.dumps(child_exact(what[0], args.seed, args.degrade)))
        elif kind == "approx":
            child_approx(what, args.seed, args.build_neighbors, args.recall_queries)
        else:
            print(json.dumps(child_probe(int(what[0]), args.probe_queries, args.seed)))
        return

    import numpy as np

    threads = int(os.environ.get("BENCH_THREADS", "1"))
    approx_sizes = args.sizes if args.approx_sizes is None else args.approx_sizes
    try:
        import pynndescent  # noqa: F401
    except ImportError:
        print("pynndescent not installed: approximate rows skipped", flush=True)
        approx_sizes = []
    facts = {"kind": "machine", "cpu_count": os.cpu_count(), "threads": threads,
             "env": {**ALLOCATOR_ENV, **{name: str(threads) for name in THREAD_VARS}},
             "loadavg": [round(v, 2) for v in os.getloadavg()],
             "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
             "python": sys.version.split()[0]}
    for package in ("numpy", "scipy", "sklearn", "pynndescent", "numba"):
        try:
            facts[package] = __import__(package).__version__
        except ImportError:
            facts[package] = None
    print(f"{facts['cpu_count']} CPUs, {threads} thread(s); child env: "
          + " ".join(f"{k}={v}" for k, v in facts["env"].items())
          + f"; load average {facts['loadavg']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as sink, tempfile.TemporaryDirectory() as tmp:
        sink.write(json.dumps(facts) + "\n")
        extra = ["--build-neighbors", str(args.build_neighbors), "--recall-queries",
                 str(args.recall_queries), "--probe-queries", str(args.probe_queries),
                 "--seed", str(args.seed)]
        folders = {}
        for count in sorted(set(args.sizes) | set(approx_sizes)):
            folders[count] = os.path.join(tmp, str(count))
            os.makedirs(folders[count])
            maps, truth = synthetic_maps(count, args.seed)
            np.save(os.path.join(folders[count], "maps.npy"), maps)
            np.save(os.path.join(folders[count], "truth.npy"), truth)
            del maps, truth
        degrade = ["--degrade", *map(str, args.degrade)]
        runs = [["--child", "exact", folders[n], *(degrade if n <= args.degrade_max else
                                                   ["--degrade"])] for n in sorted(args.sizes)]
        if approx_sizes:
            runs.append(["--child", "approx",
                         *[folders[n] for n in sorted(approx_sizes, reverse=True)]])
        runs += [["--child", "probe", str(n)] for n in args.probe_sizes]
        for run in runs:
            for result in _child([*run, *extra], threads):
                print(_row(result), flush=True)
                sink.write(json.dumps(result) + "\n")
                sink.flush()


if __name__ == "__main__":
    main()
