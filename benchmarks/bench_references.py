"""Benchmark: the reference-set pass against the audit's pass on the same folder.

The issue's goal: the reference-set pass (``cl.reference_sets``: decode, one forward with
the layer tapped, the top part of one backward, per-batch top-k, store append, the merge
and ``references.json``) costs at most 1.2x the audit's pass (``run_pass`` as
``cl.audit`` configures it: Grad-CAM at the default layer, the pooled features of that
layer, store append) over the same photos, with the bundled EfficientNet-Lite0 at 224 px
and its default layer. Rounds alternate the order (audit, references, references,
audit...), each into a fresh store, so a shared machine's neighbours hit both alike; the
medians and the median of the per-round ratios are printed as JSON::

    python benchmarks/bench_references.py --photos 64 --rounds 3 --batch-size 32

Threads: ``BENCH_THREADS`` (default 2). No timing is asserted anywhere in the tests.
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

from bench_audit import make_photos  # noqa: E402


def bench(photos: int, rounds: int, batch_size: int, k: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    import convlens as cl
    from convlens.auditing.passes import PassSettings, run_pass
    from convlens.io.datasets import read_dataset
    from convlens.store import ResultStore

    work = Path(tempfile.mkdtemp(prefix="bench-references-"))
    try:
        make_photos(work / "photos", photos)
        clf = cl.load_model(device="cpu")
        layer = clf.default_layer()
        dataset = read_dataset(work / "photos")
        settings = PassSettings(method="gradcam", layer=layer, batch_size=batch_size,
                                feature_layer=layer)

        def audit_pass(r: int) -> None:
            run_pass(clf, dataset, ResultStore(work / f"audit{r}", {"round": r}), settings)

        def references(r: int) -> None:
            cl.reference_sets(clf, work / "photos", layer, k=k, out=work / f"refs{r}",
                              batch_size=batch_size)

        audit_pass(-1)  # warm-up: first-call costs (imports, allocator) out of the rounds
        references(-1)
        times: dict[str, list[float]] = {"audit": [], "references": [], "audit_cpu": [],
                                         "references_cpu": []}
        for r in range(rounds):
            order = [("audit", audit_pass), ("references", references)]
            if r % 2:
                order.reverse()
            for name, fn in order:
                start, cpu = time.perf_counter(), time.process_time()
                fn(r)
                times[name].append(time.perf_counter() - start)
                times[name + "_cpu"].append(time.process_time() - cpu)
        ratios = [ref / aud for ref, aud in zip(times["references"], times["audit"])]
        cpu_ratios = [ref / aud for ref, aud in zip(times["references_cpu"],
                                                    times["audit_cpu"])]
        return {"photos": photos, "batch_size": batch_size, "k": k, "layer": layer,
                "threads": torch.get_num_threads(), "audit_s": times["audit"],
                "references_s": times["references"],
                "audit_median_s": statistics.median(times["audit"]),
                "references_median_s": statistics.median(times["references"]),
                "ratio_of_medians": statistics.median(times["references"])
                / statistics.median(times["audit"]),
                "median_ratio": statistics.median(ratios),
                "audit_cpu_s": times["audit_cpu"], "references_cpu_s": times["references_cpu"],
                "median_cpu_ratio": statistics.median(cpu_ratios),
                "malloc": {key: os.environ[key] for key in ("MALLOC_MMAP_MAX_",
                                                             "MALLOC_TRIM_THRESHOLD_")
                           if key in os.environ}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(bench(args.photos, args.rounds, args.batch_size, args.k), indent=1))


if __name__ == "__main__":
    main()
