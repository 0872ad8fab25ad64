"""TCAV on a 1280-channel layer: convlens (linear CAV, FastCAV) against Captum's TCAV, same
sets, same runs, each measurement in a fresh child process.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        python benchmarks/bench_tcav.py --rounds 3    # ~12 min on 2 shared cores (default 1: ~4)

The bundled EfficientNet-Lite0 at 224 px, its default layer ``head`` (1280 x 7 x 7 = 62,720
features per image). Images are made from the bundled sample photos (seeded crops and flips,
bench_audit.make_photos): a "stripes" concept (crops with black diagonal stripes drawn on),
a pool of random crops, and the tested images; all are preprocessed once into tensors that
every child loads, so decoding is not measured. Per run the same two random sets are used by
both libraries (``convlens.concepts.tcav._draws``): counterexamples and a random concept.

* ``linear`` / ``fastcav``: ``cl.tcav(..., runs=R, cav=...)`` for one class.
* ``captum``: ``captum.concept.TCAV`` (its default classifier: scikit-learn's SGDClassifier on
  the CPU, activations cached on disk under a temporary ``save_path``),
  ``interpret(inputs, [[concept, N_i]] + [[P_i, N_i]], target=k)``: the same CAVs and scores
  (Captum computes no p-value; that step costs nothing).

Each child measures the call alone (model loaded and tensors read before): wall time, and the
resident-memory peak above the level before the call (VmHWM after ``clear_refs``). Rounds
alternate the order of the three tools; medians are printed, with ratios to Captum.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TOOLS = ("linear", "fastcav", "captum")


def _stripes(image):
    from PIL import ImageDraw

    image = image.copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for offset in range(-h, w, 24):
        draw.line([(offset, 0), (offset + h, h)], fill=(0, 0, 0), width=8)
    return image


def prepare(folder: Path, concept: int, pool: int, images: int, seed: int) -> Path:
    """Make the photos, preprocess them once, save the tensors; returns the .pt file."""
    from bench_audit import make_photos
    from PIL import Image

    import convlens as cl

    classifier = cl.load_model(device="cpu")
    photos = make_photos(folder / "photos", concept + pool + images, seed=seed)
    concept_paths = photos[:concept]
    striped = []
    for path in concept_paths:
        target = folder / f"stripes-{path.name}"
        _stripes(Image.open(path).convert("RGB")).save(target)
        striped.append(target)
    tensors = {"concept": classifier.preprocess(striped),
               "pool": classifier.preprocess(photos[concept:concept + pool]),
               "images": classifier.preprocess(photos[concept + pool:])}
    target = int(classifier.logits(tensors["images"]).argmax(1).mode().values)
    path = folder / "tensors.pt"
    torch.save({**tensors, "target": target}, path)
    return path


def child(tool: str, tensors: Path, runs: int, seed: int) -> None:
    """One measurement; prints a JSON line."""
    import warnings

    from _proc import reset_peak, status_kib

    import convlens as cl
    from convlens.concepts.tcav import _draws

    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    data = torch.load(tensors)
    classifier = cl.load_model(device="cpu")
    layer = classifier.default_layer()
    concept, pool, images, target = data["concept"], data["pool"], data["images"], data["target"]
    size = min(len(concept), len(pool) // 2)
    if tool == "captum":
        from captum.concept import TCAV, Concept

        draws = _draws(len(pool), size, runs, seed)
        model = classifier.module.eval()

        def make(identifier: int, name: str, x: torch.Tensor) -> Concept:
            return Concept(identifier, name, torch.utils.data.DataLoader(x, batch_size=32))

        workdir = tempfile.mkdtemp(prefix="captum-tcav-")
        concept_c = make(0, "stripes", concept)
        negatives = [make(1 + 2 * i, f"neg{i}", pool[n]) for i, (n, _) in enumerate(draws)]
        positives = [make(2 + 2 * i, f"pos{i}", pool[p]) for i, (_, p) in enumerate(draws)]
        sets = ([[concept_c, n] for n in negatives]
                + [[p, n] for p, n in zip(positives, negatives)])

        def run() -> list[float]:
            tcav = TCAV(model, [layer], save_path=workdir)
            scores = tcav.interpret(images, sets, target=target)
            # index 0 of sign_count: the first concept of the pair (concept or P_i)
            return [float(scores[key][layer]["sign_count"][0]) for key in scores]
    else:
        def run() -> list[float]:
            result = cl.tcav(classifier, concept, layer, [target], images=images, random=pool,
                             runs=runs, cav=tool, seed=seed)
            row = result.rows[0]
            return row["scores"] + row["random_scores"]

    before = reset_peak()
    start = time.perf_counter()
    scores = run()
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    print(json.dumps({"tool": tool, "seconds": seconds, "peak_mib": (peak - before) / 1024,
                      "scores": scores, "layer": layer,
                      "features": int(np.prod(cl.layers(classifier)[-1].output_shape or [0]))
                      }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concept", type=int, default=30)
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=TOOLS)
    parser.add_argument("--tensors", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tensors, args.runs, args.seed)
        return
    allocator = {k: os.environ[k] for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
                 if k in os.environ}
    with tempfile.TemporaryDirectory() as tmp:
        tensors = prepare(Path(tmp), args.concept, args.pool, args.images, args.seed)
        results: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
        for round_ in range(args.rounds):
            order = TOOLS if round_ % 2 == 0 else TOOLS[::-1]
            for tool in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", tool, "--tensors", str(tensors),
                     "--runs", str(args.runs), "--seed", str(args.seed)],
                    capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{tool} failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results[tool].append(row)
                print(f"round {round_} {tool:8s} {row['seconds']:7.2f} s  peak +"
                      f"{row['peak_mib']:7.1f} MiB", flush=True)
    print(f"\nlayer {results['linear'][0]['layer']} (1280 x 7 x 7), {args.concept} concept + "
          f"2 x {args.concept} random images per run from a pool of {args.pool}, "
          f"{args.runs} runs, {args.images} tested images, 1 class; torch threads "
          f"{os.environ.get('BENCH_THREADS', '2')}; allocator env {allocator or 'none'}")
    medians = {tool: (statistics.median(r["seconds"] for r in rows),
                      statistics.median(r["peak_mib"] for r in rows))
               for tool, rows in results.items()}
    captum_s, captum_mib = medians["captum"]
    for tool, (seconds, mib) in medians.items():
        print(f"{tool:8s} median {seconds:7.2f} s ({seconds / captum_s:5.2f} x captum), "
              f"peak +{mib:7.1f} MiB ({mib / captum_mib:5.2f} x captum)")
    ours = np.array(results["linear"][0]["scores"])
    theirs = np.array(results["captum"][0]["scores"])
    print(f"scores per CAV (concept runs, then random runs): convlens linear {ours.round(2)}; "
          f"captum {theirs.round(2)}")


if __name__ == "__main__":
    main()
