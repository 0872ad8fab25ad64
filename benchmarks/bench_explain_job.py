"""What the batch job costs: per image against bare ``cl.explain``, and its bookkeeping per batch.

Part 1 (bundled EfficientNet-Lite0, Grad-CAM, 64 photos made from the sample photos by
crops and flips, batch size 8): seconds per image for

* ``explain``: bare :func:`convlens.explanations` per batch of 8 decoded photos, nothing written
  (the floor of the job: decoding, preprocessing, forward, backward);
* ``explain+save``: the same plus ``Explanation.save`` (overlay + grid PNGs, matplotlib),
  what the job did before it had a store;
* ``job``: :class:`ExplainJob` into a fresh folder (scan, hashing, DataLoader, the same
  PNGs written atomically, shard + summary per batch, results.json at the end);
* ``job rerun``: the same job again (everything skipped: hashing and reading records);
* ``job no-grid``: the job writing overlays only (``grids=False``, ``--no-grid``): without
  matplotlib's grid, the job's own cost shows.

Rounds alternate the three so a neighbour on the shared machine hits all of them alike;
medians over rounds are printed.

Part 2 (tiny CNN, 16x16 inputs, 16 vs 256 photos, batch size 8, overlays only: no
matplotlib grids, which would hide the bookkeeping in their noise): the median time of one
batch (between two progress events) and the one-off end (results.json rebuilt from the
shards). A flat time per batch shows the per-batch bookkeeping is O(batch), not O(images
done). Run: ``PYTHONPATH=src python benchmarks/bench_explain_job.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_photos(folder: Path, count: int, size: int | None = None) -> list[Path]:
    """``count`` distinct photos: crops and flips of the bundled samples (or noise at ``size``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if size is not None:
        for i in range(count):
            pixels = np.random.default_rng(i).integers(0, 255, (size, size, 3), np.uint8)
            path = folder / f"n{i:04d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
        return paths
    from convlens.io.samples import sample_images

    samples = list(sample_images().values())
    for i in range(count):
        image = samples[i % len(samples)]
        w, h = image.size
        shift = (i // len(samples)) * 7
        crop = image.crop((shift, shift // 2, w - shift // 3, h - shift // 4))
        if (i // len(samples)) % 2:
            crop = ImageOps.mirror(crop)
        path = folder / f"s{i:03d}.jpg"
        crop.save(path, quality=92)
        paths.append(path)
    return paths


VARIANTS = ("explain", "explain+save", "job", "job rerun", "job no-grid")


def part1(rounds: int, count: int, batch_size: int, variants: list[str]) -> None:
    import convlens as cl
    from convlens.io.images import load_image
    from convlens.jobs.explain_job import ExplainJob

    clf = cl.load_model(device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    paths = make_photos(work / "in", count)

    def bare(save: bool) -> None:
        out = work / "bare"
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [load_image(p) for p in chunk]
            exps = cl.explain(clf, images, ["gradcam"], names=[p.stem for p in chunk])
            if save:
                for exp in exps:
                    exp.save(out)

    def job(grids: bool = True) -> None:
        folder = work / ("job" if grids else "job-no-grid")
        ExplainJob(clf, ["gradcam"], folder, batch_size=batch_size, page=False,
                   grids=grids).run([work / "in"])

    functions = {"explain": lambda: bare(False), "explain+save": lambda: bare(True),
                 "job": job, "job rerun": job, "job no-grid": lambda: job(False)}
    chosen = ["explain", *[v for v in variants if v != "explain"]]
    if "job rerun" in chosen and "job" not in chosen:
        chosen.insert(chosen.index("job rerun"), "job")
    times: dict[str, list[float]] = {name: [] for name in chosen}
    bare(False)  # warm-up
    for _ in range(rounds):
        for name in chosen:
            fn = functions[name]
            if name in ("job", "job no-grid"):
                shutil.rmtree(work / ("job" if name == "job" else "job-no-grid"),
                              ignore_errors=True)
            begun = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - begun) / len(paths))
    print(f"part 1: bundled {clf.name}, gradcam, {len(paths)} photos, batch {batch_size}, "
          f"{torch.get_num_threads()} thread(s), {rounds} round(s): seconds per image")
    floor = statistics.median(times["explain"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:>13}: median {median:.4f}  min {min(values):.4f}  "
              f"x{median / floor:.2f} of bare explain")
    shutil.rmtree(work, ignore_errors=True)


def part2(rounds: int, batch_size: int) -> None:
    from tiny_models import TinyVGG, seeded

    from convlens.jobs.explain_job import ExplainJob
    from convlens.models.classifier import Classifier

    clf = Classifier(seeded(TinyVGG(classes=4), dtype=torch.float32), ["a", "b", "c", "d"],
                     input_size=16, device="cpu", name="tiny")
    work = Path(tempfile.mkdtemp(prefix="bench-book-"))
    print(f"part 2: tiny CNN, 16x16, gradcam, batch {batch_size}: seconds per batch "
          "(median over batches, then over rounds)")
    for count in (16, 256):
        folder = work / f"in{count}"
        make_photos(folder, count, size=16)
        per_batch, first_half, second_half, ends = [], [], [], []
        for _ in range(rounds):
            out = work / f"out{count}"
            shutil.rmtree(out, ignore_errors=True)
            stamps: list[float] = []

            def progress(event, stamps=stamps) -> None:
                if event.stage == "explain":
                    stamps.append(time.perf_counter())

            job = ExplainJob(clf, ["gradcam"], out, batch_size=batch_size, page=False,
                             grids=False)
            job.run([folder], progress=progress)
            finished = time.perf_counter()
            gaps = np.diff(stamps[1:])  # from the end of batch 1 on (batch 1 pays start-up)
            per_batch.append(float(np.median(gaps)))
            half = len(gaps) // 2 or 1
            first_half.append(float(np.median(gaps[:half])))
            second_half.append(float(np.median(gaps[half:] if len(gaps) > 1 else gaps)))
            ends.append(finished - stamps[-1])
        print(f"  {count:>4} photos: per batch {statistics.median(per_batch):.4f}  "
              f"(first half {statistics.median(first_half):.4f}, last half "
              f"{statistics.median(second_half):.4f}); end (results.json) "
              f"{statistics.median(ends):.4f}")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"part 1 variants, comma-separated: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part in ("1", "both"):
        part1(args.rounds, args.photos, args.batch_size, args.variants.split(","))
    if args.part in ("2", "both"):
        part2(args.rounds, args.batch_size)


if __name__ == "__main__":
    main()
