"""What recording concepts costs the audit's pass (convlens 11; figures go to BENCHMARKS.md,
"Concepts in the audit"; no timing asserts in tests).

The streaming pass (decode, forward + Grad-CAM backward, store append) over ``--photos``
JPEGs made from the bundled samples (benchmarks/bench_audit.py's ``make_photos``), with the
bundled EfficientNet-Lite0, without concepts and with ``concepts=True`` (the CAM layer:
gradient x activation from the CAM's own capture), in interleaved rounds (the order flips
every round) so a shared machine's neighbours hit both alike; medians and the median of the
per-round ratios. ``--other-layer NAME`` adds a third variant whose concept layer is not the
CAM layer (one ``crp.layer_relevance`` call per batch: a forward and the top of a backward)::

    python benchmarks/bench_audit_concepts.py --photos 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    parser.add_argument("--other-layer", default=None,
                        help="also time a concept layer other than the CAM layer")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bench_audit import make_photos

    import convlens as cl
    from convlens.auditing.passes import PassSettings, run_pass
    from convlens.io.datasets import read_dataset
    from convlens.models.layers import default_layer_name
    from convlens.store import ResultStore

    work = Path(tempfile.mkdtemp(prefix="bench-concepts-"))
    try:
        make_photos(work / "photos", args.photos)
        clf = cl.load_model(device="cpu")
        dataset = read_dataset(work / "photos")
        layer = default_layer_name(clf.module, (3, *clf.preprocessing.input_size), "cpu")
        variants = {"plain": PassSettings(layer=layer, batch_size=args.batch_size,
                                          feature_layer=layer),
                    "concepts": PassSettings(layer=layer, batch_size=args.batch_size,
                                             feature_layer=layer, concept_layer=layer,
                                             concept_rule="gradient")}
        if args.other_layer:
            variants["other_layer"] = PassSettings(
                layer=layer, batch_size=args.batch_size, feature_layer=layer,
                concept_layer=args.other_layer, concept_rule="auto")
        runs = 0

        def once(settings: PassSettings) -> float:
            nonlocal runs
            runs += 1
            store = ResultStore(work / f"store{runs}", {"run": runs})
            start = time.perf_counter()
            run_pass(clf, dataset, store, settings)
            elapsed = time.perf_counter() - start
            shutil.rmtree(work / f"store{runs}")
            return elapsed

        once(variants["plain"])  # warm-up: imports, the default layer, the page cache
        times: dict[str, list[float]] = {name: [] for name in variants}
        for k in range(args.rounds):
            order = list(variants)
            if k % 2:
                order.reverse()
            for name in order:
                times[name].append(once(variants[name]))
        result = {"photos": args.photos, "batch_size": args.batch_size, "layer": layer,
                  "threads": torch.get_num_threads(),
                  "allocator": {v: os.environ.get(v) for v in ("MALLOC_ARENA_MAX",
                                                               "MALLOC_TRIM_THRESHOLD_",
                                                               "OMP_NUM_THREADS")},
                  "cpu_count": os.cpu_count(), "times_s": times,
                  "median_s": {n: statistics.median(t) for n, t in times.items()}}
        for name in variants:
            if name != "plain":
                ratios = [a / b for a, b in zip(times[name], times["plain"])]
                result[f"{name}_ratio_median"] = statistics.median(ratios)
                result[f"{name}_ratios"] = ratios
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
