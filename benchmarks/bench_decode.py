"""Reduced-size JPEG decoding: what it saves on camera photos and how far the maps move.

Photos: 12-megapixel JPEGs (4000x3000, quality 90) made from the bundled sample photos
(:mod:`convlens.io.samples`, no download) in a temporary folder, two ways each: ``up`` (the
photo upscaled, smooth like a good camera's) and ``tile`` (the photo repeated at its own
scale, as much fine detail per pixel as the sample has, a harder file for the entropy
decoder); plus the small samples themselves as JPEGs (451x300 to 741x500), which a 224-pixel
model never reduces.

Part 1, time: :meth:`Preprocessing.load_file` (decode + preprocess, what every command does
per file) with ``decode_margin=None`` (full decode), ``1`` and ``2`` (the default), and
``2+photo`` (``keep_photo=True``: the explain job's reduced input plus the full-size photo it
draws overlays on). One torch thread; every photo's variants run back to back in shuffled
order within a round, rounds interleaved (benchmarks/_timing.py); medians over rounds, and the
paired ratio full / reduced.

Part 2, maps: the bundled EfficientNet-Lite0 (``convlens.load_model()``, offline), Grad-CAM of
the full decode's predicted class on the full and on each reduced decode: prediction
agreement, top-1 probability difference, and map difference: Pearson r, the share of the
sum-normalised map's mass that moves (half the L1 distance), and the largest difference of the
peak-normalised maps (each divided by its own maximum, as overlays are drawn).

Run (allocator settings as ``make bench``)::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        PYTHONPATH=src python benchmarks/bench_decode.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from _timing import Timed, format_facts, machine_facts, paired_ratio, run_groups
from PIL import Image

import convlens
from convlens.attribution.core import attribute, get_method
from convlens.io.images import load_reduced
from convlens.io.samples import sample_images
from convlens.present.heatmap import apply_sign

SIZE = (4000, 3000)
MARGINS = {"full": None, "margin 1": 1, "margin 2": 2}


def make_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """The 12 MP JPEGs (``up`` and ``tile`` per sample) and the small samples as JPEGs."""
    large, small = [], []
    for name, photo in sample_images().items():
        up = photo.resize(SIZE, Image.Resampling.BICUBIC)
        tiled = Image.new("RGB", SIZE)
        for top in range(0, SIZE[1], photo.height):
            for left in range(0, SIZE[0], photo.width):
                tiled.paste(photo, (left, top))
        for kind, image in (("up", up), ("tile", tiled)):
            path = folder / f"{name}-{kind}.jpg"
            image.save(path, quality=90)
            large.append(path)
        path = folder / f"{name}.jpg"
        photo.save(path, quality=90)
        small.append(path)
    return large, small


def time_decoding(preprocessings: dict, photos: list[Path], rounds: int) -> None:
    groups, by_photo = [], {}
    for path in photos:
        items = {}
        for label, pre in preprocessings.items():
            items[label] = Timed(f"{path.name}:{label}",
                                 lambda p=path, q=pre: q.load_file(p), rounds)
        items["margin 2+photo"] = Timed(
            f"{path.name}:margin 2+photo",
            lambda p=path, q=preprocessings["margin 2"]: q.load_file(p, keep_photo=True), rounds)
        groups.append(list(items.values()))
        by_photo[path] = items
    run_groups(groups, rounds, torch.device("cpu"),
               progress=lambda text: print(text, file=sys.stderr))
    labels = [*preprocessings, "margin 2+photo"]
    print("\n| photo (4000x3000, q90) | file | decoded at (margin 1 / 2) | "
          + " | ".join(f"{label} ms" for label in labels) + " | full / margin 2 | "
          "full / margin 1 |")
    print("|---" * (len(labels) + 5) + "|")
    ratios2, ratios1, ratios_photo = [], [], []
    for path, items in by_photo.items():
        sizes = " / ".join(
            "x".join(map(str, load_reduced(path, preprocessings[m].decode_size)[0].size))
            for m in ("margin 1", "margin 2"))
        r2 = paired_ratio(items["full"], items["margin 2"])
        r1 = paired_ratio(items["full"], items["margin 1"])
        ratios2.append(r2)
        ratios1.append(r1)
        ratios_photo.append(paired_ratio(items["margin 2+photo"], items["full"]))
        times = " | ".join(f"{items[label].median * 1e3:.1f}" for label in labels)
        print(f"| {path.stem} | {path.stat().st_size / 1e6:.1f} MB | {sizes} | {times} | "
              f"{r2:.1f}x | {r1:.1f}x |")
    print(f"\nmedian ratio full / margin 2: {statistics.median(ratios2):.1f}x; full / margin "
          f"1: {statistics.median(ratios1):.1f}x; explain job's decode (margin 2 + full photo)"
          f" / full: {statistics.median(ratios_photo):.2f}x")


def _gradcam(classifier, x: torch.Tensor, target: int) -> torch.Tensor:
    spec = get_method("gradcam")
    raw = attribute(classifier, x[None], "gradcam", target=torch.tensor([target]))
    return apply_sign(spec.to_map(raw), "positive")[0].double()


def compare_maps(classifier, preprocessings: dict, photos: list[Path]) -> None:
    print("\n| photo | margin | same top-1 | top-1 prob. diff | Pearson r | mass moved "
          "| max diff (peak-normalised) |")
    print("|---|---|---|---|---|---|---|")
    worst = {}
    for path in photos:
        x_full = preprocessings["full"].load_file(path)[0]
        with torch.no_grad():
            p_full = classifier.logits(x_full[None]).softmax(1)[0]
        target = int(p_full.argmax())
        map_full = _gradcam(classifier, x_full, target)
        for label in ("margin 1", "margin 2"):
            x = preprocessings[label].load_file(path)[0]
            with torch.no_grad():
                p = classifier.logits(x[None]).softmax(1)[0]
            cam = _gradcam(classifier, x, target)
            a, b = map_full.flatten(), cam.flatten()
            r = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 else 1.0
            moved = float(0.5 * (a / a.sum() - b / b.sum()).abs().sum())
            peak = float((a / a.max() - b / b.max()).abs().max())
            same = int(p.argmax()) == target
            delta = float(p[target] - p_full[target])
            row = worst.setdefault(label, {"agree": 0, "n": 0, "dp": 0.0, "r": 1.0,
                                           "moved": 0.0, "peak": 0.0})
            row["agree"] += same
            row["n"] += 1
            row["dp"] = max(row["dp"], abs(delta))
            row["r"] = min(row["r"], r)
            row["moved"] = max(row["moved"], moved)
            row["peak"] = max(row["peak"], peak)
            print(f"| {path.stem} | {label} | {'yes' if same else 'NO'} | {delta:+.4f} | "
                  f"{r:.4f} | {moved:.4f} | {peak:.3f} |")
    for label, row in worst.items():
        print(f"{label}: top-1 agrees on {row['agree']}/{row['n']}; worst: probability "
              f"difference {row['dp']:.4f}, Pearson r {row['r']:.4f}, mass moved "
              f"{row['moved']:.4f}, peak-normalised difference {row['peak']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(format_facts(machine_facts(torch.device("cpu"))))
    classifier = convlens.load_model(device="cpu")
    base = classifier.preprocessing
    preprocessings = {label: dataclasses.replace(base, decode_margin=margin)
                      for label, margin in MARGINS.items()}
    with tempfile.TemporaryDirectory(prefix="convlens-bench-decode-") as folder:
        large, small = make_photos(Path(folder))
        time_decoding(preprocessings, large, args.rounds)
        compare_maps(classifier, preprocessings, large + small)


if __name__ == "__main__":
    main()
