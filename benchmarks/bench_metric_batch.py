"""Per-image cost of the deletion metric (preset ``rise``) against the batch size, on one
device, to choose the metrics' default batch (``convlens.metrics.core.default_batch_size``).

One photo (the first bundled sample), its Grad-CAM map upsampled to 224 px, the bundled
EfficientNet-Lite0. The rise preset (to zeros, all channels of a pixel, softmax) with
``steps=63`` instead of ``step=224``: 64 curve points, so every batch size from 1 to 64
divides the curve (no ragged last batch) and one call is 64 forwards. Batch sizes run
interleaved (shuffled in each round, one process), medians over rounds; both the process's
CPU time and wall time are printed per image, with the load average (a shared machine).

Usage::

    python benchmarks/bench_metric_batch.py --rounds 2
    python benchmarks/bench_metric_batch.py --rounds 3 --threads 1
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \
        python benchmarks/bench_metric_batch.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import format_facts, machine_facts, synchronize  # noqa: E402

import convlens  # noqa: E402
import convlens.metrics as M  # noqa: E402

SIZES = (1, 2, 4, 8, 16, 32, 64)
POINTS = 64  # steps=63 -> ceil(50176 / 797) + 1 = 64 points at 224 x 224


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    from convlens.io.samples import sample_images

    clf = convlens.load_model(device=str(device))
    x = clf.preprocess(list(sample_images().values())[:1])
    maps = torch.nn.functional.interpolate(convlens.attribute(clf, x, "gradcam"),
                                           size=x.shape[-2:], mode="bilinear")
    options = dict(M.get_metric("deletion").bind(preset="rise"), step=None, steps=POINTS - 1)
    with torch.no_grad():
        for size in sizes:  # warm-up: one forward per batch size
            clf.module(x.expand(size, -1, -1, -1).contiguous())
    wall: dict[int, list[float]] = {s: [] for s in sizes}
    cpu: dict[int, list[float]] = {s: [] for s in sizes}
    curves = {}
    rng = random.Random(0)
    started = time.perf_counter()
    load = os.getloadavg()
    for index in range(args.rounds):
        order = list(sizes)
        rng.shuffle(order)
        for size in order:
            synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            scores = M.deletion(clf.module, x, maps, **{**options, "batch_size": size})
            synchronize(device)
            wall[size].append((time.perf_counter() - w0) / POINTS)
            cpu[size].append((time.process_time() - c0) / POINTS)
            curves[size] = scores.curves["deletion"]
            print(f"[{time.perf_counter() - started:6.1f}s] round {index + 1} batch {size}: "
                  f"{1000 * wall[size][-1]:.1f} ms/image wall, {1000 * cpu[size][-1]:.1f} ms "
                  "CPU", file=sys.stderr, flush=True)
    spread = max(float(abs(curves[s] - curves[sizes[0]]).max()) for s in sizes)
    facts = machine_facts(device)
    lines = [f"# deletion (rise, steps=63: {POINTS} forwards per call) per image vs batch size",
             "", format_facts(facts),
             f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}; "
             f"{args.rounds} rounds, shuffled; medians", "",
             "| batch | ms/image (CPU time) | ms/image (wall) | x batch-1 (wall) |",
             "|---|---|---|---|"]
    base = statistics.median(wall[sizes[0]])
    for size in sizes:
        med_w, med_c = statistics.median(wall[size]), statistics.median(cpu[size])
        lines.append(f"| {size} | {1000 * med_c:.1f} | {1000 * med_w:.1f} | "
                     f"{med_w / base:.2f} |")
    best = min(sizes, key=lambda s: statistics.median(wall[s]))
    lines += ["", f"- fastest (wall): batch {best}; curves equal across batches within "
              f"{spread:.1e}", f"\nwall time {time.perf_counter() - started:.0f}s"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
