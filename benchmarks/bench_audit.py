"""Benchmarks of ``convlens audit`` (figures go to BENCHMARKS.md; no timing asserts in tests).

Four measurements, each a subcommand (``all`` runs them in turn)::

    python benchmarks/bench_audit.py pass --photos 2000 --batch-size 32
    python benchmarks/bench_audit.py cluster --maps 10000
    python benchmarks/bench_audit.py memory --images 1000 10000
    python benchmarks/bench_audit.py all

* ``pass``: the streaming pass (decode, one forward + Grad-CAM backward, store append) over
  photos made from the bundled samples (seeded crops, flips and resizes, saved as JPEG), with
  the bundled EfficientNet-Lite0 at 224 px, against a bare loop of the same decoding +
  ``cl.attribute(clf, x, "gradcam")`` at the same batch size, in interleaved rounds (bare,
  pass, pass, bare...) so a shared machine's neighbours hit both alike; then the full audit
  (pass + SpRAy + causal checks, no report) on a fresh folder, and the same command again on
  the finished folder (the resume path: hashing, store read, clustering, checks).
* ``cluster``: SpRAy on 10,000 synthetic 32x32 float16 maps (four strategies), with and
  without the t-SNE picture.
* ``memory``: peak resident memory (``VmHWM``) of a whole ``cl.audit`` in a fresh process on
  N synthetic 32x32 images with the small planted model (tests/planted_bias.py), for
  several N (1,000 and 10,000 by default, side by side in one run): memory must not grow
  with the dataset. The baseline is taken after the model's first forward and a tiny
  clustering (scikit-learn / SciPy imported), so one-off imports are not counted as growth.
  ``--max-cluster-maps M`` caps the clustering below both sizes (the benchmark's untrained
  model predicts one class for every image, so its one group holds all N maps and the
  clustering grows with N up to the cap, by design): what is left is the rest of the audit.
  ``--cluster-only`` measures the clustering alone (``build_audit`` on N synthetic maps
  written to a store, no pass), for the part that holds one group's maps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _proc import reset_peak, status_kib  # noqa: E402


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG photos made from the bundled samples (seeded crops, flips, sizes)."""
    from PIL import Image

    from convlens.io.samples import sample_images

    folder.mkdir(parents=True, exist_ok=True)
    samples = list(sample_images().values())
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        image = samples[k % len(samples)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        side = int(rng.integers(256, 400))
        crop = crop.resize((side, int(side * ch / cw)))
        path = folder / f"{k:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def bench_pass(photos: int, batch_size: int, rounds: int) -> dict:
    _threads()
    import torch

    import convlens as cl
    from convlens.auditing.passes import PassSettings, run_pass
    from convlens.io.datasets import read_dataset
    from convlens.io.images import load_image
    from convlens.store import ResultStore

    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        paths = make_photos(work / "photos", photos)
        clf = cl.load_model(device="cpu")
        pre = clf.preprocessing

        def bare() -> None:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                x = torch.stack([pre.to_tensor(pre.resize_image(load_image(p))[0])
                                 for p in chunk])
                cl.attribute(clf, x, "gradcam")

        dataset = read_dataset(work / "photos")
        settings = PassSettings(layer=None, batch_size=batch_size)
        from convlens.models.layers import default_layer_name

        settings.layer = default_layer_name(clf.module, (3, 224, 224), "cpu")

        def ours(k: int) -> None:
            store = ResultStore(work / f"store{k}", {"bench": k})
            run_pass(clf, dataset, store, settings)

        times: dict[str, list[float]] = {"bare": [], "pass": [], "bare_cpu": [], "pass_cpu": []}
        for k in range(rounds):
            order = [("bare", bare), ("pass", lambda k=k: ours(k))]
            if k % 2:
                order.reverse()
            for name, fn in order:
                start, cpu = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                times[name + "_cpu"].append(time.process_time() - cpu)
        bare_times, pass_times = times["bare"], times["pass"]
        ratios = [p / b for p, b in zip(pass_times, bare_times)]
        cpu_ratios = [p / b for p, b in zip(times["pass_cpu"], times["bare_cpu"])]
        print(json.dumps({"pass_rounds": {"photos": photos, "bare_s": bare_times,
                                          "pass_s": pass_times, "ratios": ratios,
                                          "cpu_ratios": cpu_ratios}}), flush=True)
        out = work / "audit-out"
        start, cpu = time.perf_counter(), time.process_time()
        cl.audit(clf, work / "photos", out=out, batch_size=batch_size)
        first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        cl.audit(clf, work / "photos", out=out, batch_size=batch_size)
        second, second_cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"photos": photos, "batch_size": batch_size, "bare_s": bare_times,
                "pass_s": pass_times, "pass_over_bare": ratios, "cpu_s": times,
                "cpu_pass_over_bare": cpu_ratios,
                "median_ratio": statistics.median(ratios), "full_audit_s": first,
                "second_run_s": second, "second_over_first": second / first,
                "second_over_first_cpu": second_cpu / first_cpu}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def synthetic_maps(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    centres = [(8, 8), (24, 24), (8, 24), (16, 16)]
    maps = np.empty((count, 32, 32), np.float16)
    for i in range(count):
        cy, cx = centres[i % 4]
        cy, cx = cy + rng.normal(0, 2), cx + rng.normal(0, 2)
        width = rng.uniform(2, 5)
        maps[i] = (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
                   + 0.05 * rng.random((32, 32)))
    return maps


def bench_cluster(count: int, rounds: int) -> dict:
    _threads()
    from convlens.auditing.spray import spray

    maps = synthetic_maps(count)
    spray(maps[:500], tsne=True)  # imports and warm-up
    plain, with_tsne, steps, cpu = [], [], None, []
    for _ in range(rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = spray(maps, tsne=False)
        plain.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        steps = {s.name: round(s.seconds, 3) for s in result.steps}
        start = time.perf_counter()
        spray(maps, tsne=True)
        with_tsne.append(time.perf_counter() - start)
    return {"maps": count, "clusters": result.n_clusters, "sizes": result.sizes(),
            "seconds": plain, "cpu_seconds": cpu, "seconds_with_tsne": with_tsne, "steps": steps}


def _memory_child(count: int, max_cluster_maps: int | None = None) -> None:
    _threads()
    from PIL import Image
    from planted_bias import CLASSES, PlantedNet, draw

    import convlens as cl

    work = Path(tempfile.mkdtemp(prefix="bench-audit-mem-"))
    try:
        rng = np.random.default_rng(0)
        for k in range(count):
            kind = CLASSES[k % 3]
            folder = work / "data" / kind
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw(kind, bool(rng.random() < 0.2), rng)).save(folder / f"{k}.png")
        import torch

        torch.manual_seed(0)
        clf = cl.Classifier(PlantedNet(), labels=CLASSES, input_size=32, mean=(0, 0, 0),
                            std=(1, 1, 1), resize="squash", device="cpu")
        clf.predict(torch.zeros(1, 3, 32, 32))
        # One-off costs before the baseline: scikit-learn / SciPy imports and their first
        # allocations (a tiny clustering), so the growth measured is what scales with N.
        from convlens.auditing.spray import spray

        spray(synthetic_maps(64), tsne=False)
        base = reset_peak()
        start = time.perf_counter()
        options = {} if max_cluster_maps is None else {"max_cluster_maps": max_cluster_maps}
        cl.audit(clf, work / "data", out=work / "out", batch_size=64, **options)
        seconds = time.perf_counter() - start
        peak = status_kib("VmHWM")
        print(json.dumps({"images": count, "max_cluster_maps": max_cluster_maps,
                          "malloc": {k: v for k, v in os.environ.items()
                                     if k.startswith("MALLOC_")},
                          "baseline_mib": base / 1024,
                          "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024,
                          "seconds": seconds}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cluster_child(count: int) -> None:
    """``build_audit`` (SpRAy per group, no causal check) on ``count`` synthetic stored maps."""
    _threads()
    from convlens.auditing.analysis import MapReader, build_audit, stored_images
    from convlens.auditing.spray import spray
    from convlens.store import ResultStore

    work = Path(tempfile.mkdtemp(prefix="bench-audit-cluster-"))
    try:
        store = ResultStore(work / "store", {"bench": "cluster"})
        maps = synthetic_maps(count)
        classes = ["a", "b", "c"]
        for start in range(0, count, 64):
            chunk = maps[start:start + 64]
            records = [{"key": f"k{start + r}", "path": f"{start + r:06d}.png", "label": None,
                        "predicted": classes[(start + r) % 3], "predicted_index": 0,
                        "probability": 1.0, "top5": [], "correct": None, "row": r,
                        "true_row": None} for r in range(len(chunk))]
            store.append(records, {"maps": chunk, "truemaps": np.zeros((0, 32, 32),
                                                                       np.float16)})
        del maps
        spray(synthetic_maps(64), tsne=False)  # one-off imports before the baseline
        base = reset_peak()
        start = time.perf_counter()
        images = stored_images(store, [f"k{i}" for i in range(count)])
        build_audit(images, MapReader(store), header={}, errors=[])
        seconds = time.perf_counter() - start
        peak = status_kib("VmHWM")
        print(json.dumps({"maps": count, "baseline_mib": base / 1024, "peak_mib": peak / 1024,
                          "growth_mib": (peak - base) / 1024, "seconds": seconds}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_memory(counts: list[int], cluster_only: bool = False,
                 max_cluster_maps: int | None = None) -> list[dict]:
    results = []
    for count in counts:
        env = {**os.environ, "MPLBACKEND": "Agg"}
        child = "_cluster" if cluster_only else "_memory"
        cap = [] if max_cluster_maps is None else ["--max-cluster-maps", str(max_cluster_maps)]
        done = subprocess.run([sys.executable, __file__, child, str(count), *cap],
                              capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pass")
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    c = sub.add_parser("cluster")
    c.add_argument("--maps", type=int, default=10000)
    c.add_argument("--rounds", type=int, default=3)
    m = sub.add_parser("memory")
    m.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    m.add_argument("--cluster-only", action="store_true")
    m.add_argument("--max-cluster-maps", type=int, default=None,
                   help="cap the clustering (cl.audit's max_cluster_maps) to see the rest")
    a = sub.add_parser("all")
    a.add_argument("--photos", type=int, default=2000)
    for name in ("_memory", "_cluster"):
        child = sub.add_parser(name)
        child.add_argument("count", type=int)
        child.add_argument("--max-cluster-maps", type=int, default=None)
    args = parser.parse_args()
    if args.what == "_memory":
        _memory_child(args.count, args.max_cluster_maps)
        return
    if args.what == "_cluster":
        _cluster_child(args.count)
        return
    facts = {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
             "threads": int(os.environ.get("BENCH_THREADS", "1")),
             "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps({"machine": facts}), flush=True)
    if args.what in ("cluster", "all"):
        print(json.dumps({"cluster": bench_cluster(getattr(args, "maps", 10000),
                                                   getattr(args, "rounds", 3))}), flush=True)
    if args.what in ("memory", "all"):
        print(json.dumps({"memory": bench_memory(getattr(args, "images", [1000, 10000]),
                                                 getattr(args, "cluster_only", False),
                                                 getattr(args, "max_cluster_maps", None))}),
              flush=True)
    if args.what in ("pass", "all"):
        print(json.dumps({"pass": bench_pass(args.photos, getattr(args, "batch_size", 32),
                                             getattr(args, "rounds", 2))}), flush=True)


if __name__ == "__main__":
    main()
