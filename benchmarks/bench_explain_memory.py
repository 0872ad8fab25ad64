"""Peak resident memory of ``cl.explain`` (bundled model, gradcam) versus the number of photos.

Not a test. Each case runs in a fresh child process (so peaks do not mix): the child loads
the bundled model, reads ``VmRSS``, resets the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``), runs ``cl.explain`` over the photos and reads
``VmHWM``; it prints both, and the growth. The photos are random smooth JPEGs of
2000 x 1500 pixels (the size of a phone photo), written once to a temporary directory.

Usage::

    PYTHONPATH=src python benchmarks/bench_explain_memory.py            # 4, 64, 512 photos
    PYTHONPATH=src python benchmarks/bench_explain_memory.py 4 16 --top 1000

``--top K`` adds one case: one photo with ``target="top:K"`` (K explanations).
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import reset_peak, status_kib  # noqa: E402

WIDTH, HEIGHT = 2000, 1500


def make_photos(directory: Path, count: int) -> list[Path]:
    """``count`` random smooth JPEGs (upsampled noise compresses like a photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = directory / f"photo-{index:04d}.jpg"
        if not path.exists():
            small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC).save(
                path, quality=90)
        paths.append(path)
    return paths


def child(directory: Path, count: int, top: int | None, batch_size: int) -> None:
    import warnings

    import torch

    torch.set_num_threads(1)
    import convlens as cl

    warnings.simplefilter("ignore", cl.ConvlensWarning)  # counted below instead

    classifier = cl.load_model(device="cpu")
    paths = sorted(directory.glob("photo-*.jpg"))[:count]
    cl.explain(classifier, paths[:1], ["gradcam"])  # warm up: allocator, default layer
    before = reset_peak() // 1024  # MiB
    begun = time.perf_counter()
    target = f"top:{top}" if top else None
    explanations = cl.explain(classifier, paths, ["gradcam"], target=target,
                              batch_size=batch_size)
    seconds = time.perf_counter() - begun
    peak = status_kib("VmHWM") // 1024
    noted = sum(bool(exp.notes) for exp in explanations)
    print(f"{count}\t{top or '-'}\t{len(explanations)}\t{before}\t{peak}\t{peak - before}\t"
          f"{seconds:.1f}\t{noted}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[4, 64, 512])
    parser.add_argument("--top", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", nargs=2, metavar=("DIR", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-top", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), args.child_top, args.batch_size)
        return
    cases = [(count, None) for count in args.counts]
    if args.top:
        cases.append((1, args.top))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_photos(directory, max(count for count, _ in cases))
        print(f"cl.explain(bundled EfficientNet-Lite0, gradcam, batch_size={args.batch_size}) "
              f"on {WIDTH}x{HEIGHT} JPEGs; one child process per case; MiB")
        print("photos\ttop\texplanations\trss_before\tpeak_rss\tgrowth\tseconds\twith_notes",
              flush=True)
        for count, top in cases:
            command = [sys.executable, __file__, "--child", str(directory), str(count),
                       "--batch-size", str(args.batch_size)]
            if top:
                command += ["--child-top", str(top)]
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


if __name__ == "__main__":
    main()
