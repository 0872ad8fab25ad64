"""Cost of deletion + insertion (preset ``rise``) against the forwards they need, and against
Quantus's pixel flipping at the same settings, measured side by side in one run.

Floor: the forwards the two curves cannot avoid, ``2 x N x 225`` images at 224 px, run as
batches of ``--batch-size`` pre-built inputs under ``no_grad`` (the same batch size our
metrics use). Ours: ``convlens.metrics.deletion`` + ``insertion`` at their defaults (the RISE
reference code's settings), at the library's default batch (by device:
``convlens.metrics.core.default_batch_size``) unless ``--batch-size`` is given; with
``--also-batch B`` our deletion is also timed at batch B (64 was the default on every device
before). Quantus: ``PixelFlipping(features_in_step=3 * 224,
perturb_baseline=0.0)`` with ``softmax=True`` and the map broadcast over channels: the same
224 whole pixels per step, to zeros, on the softmax probability (Quantus has no insertion from
a blur, so its time is compared with our deletion alone). Quantus's batch is images (all N at
once here), ours perturbed copies. Items run in shuffled order in each round; medians.

The sanity table (model-parameter randomisation, Adebayo et al. 2018) is the library's own
output: ``convlens evaluate PHOTOS --metric randomisation ... --out DIR``; ``--sanity-from
DIR/evaluation.json`` turns it into ``benchmarks/results/metrics_sanity.md``.

Usage::

    python benchmarks/bench_metrics.py --images 8 --rounds 1        # CPU, writes results
    python benchmarks/bench_metrics.py --images 1 --rounds 3 --deletion-only --also-batch 64
    python benchmarks/bench_metrics.py --images 100 --device cuda --rounds 3
    python benchmarks/bench_metrics.py --sanity-from out/evaluation.json
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import format_facts, machine_facts, synchronize  # noqa: E402

import convlens  # noqa: E402
import convlens.metrics as M  # noqa: E402


def sanity_table(path: Path, output: Path) -> str:
    """The randomisation stages of an ``evaluation.json`` as a markdown table."""
    import json

    data = json.loads(Path(path).read_text())
    key = next(k for k in data["metrics"] if k.split(":")[0] == "randomisation")
    card = data["cards"][key]
    rows = [r for r in data["results"] if r["metric"] == key]
    stages = list(rows[0]["stages"])
    lines = ["# Model-parameter randomisation (Adebayo et al. 2018), cascading: convlens "
             "evaluate --metric randomisation", "",
             f"model: {card['model']}, input {card['input_shape']}; images: "
             f"{', '.join(Path(i).name for i in data['images'])} (explained class: the trained "
             f"model's prediction: {', '.join(data['target_labels'])})",
             f"cell = mean over images of {card['options']['similarity']} rank correlation of "
             "|2-D map| (trained vs re-initialised from the output down to the column's unit, "
             "cumulative); options: " + json.dumps(card["options"]),
             "method options: " + json.dumps({m: o for m, o in card["methods"].items() if o}),
             "", "| method | " + " | ".join(stages) + " | mean [95% interval] |",
             "|---|" + "---|" * (len(stages) + 1)]
    summary = {r["method"]: r for r in data["summary"] if r["metric"] == key}
    for row in rows:
        cells = [f"{np.mean([v for v in row['stages'][s] if v is not None]):.2f}"
                 for s in stages]
        sm = summary[row["method"]]
        lines.append(f"| {row['method']} | " + " | ".join(cells) +
                     f" | {sm['mean']:.2f} [{sm['low']:.2f}, {sm['high']:.2f}] |")
    text = "\n".join(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    return text


def _timed_rounds(items: dict, rounds: int, device: torch.device, started: float
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of every runner over ``rounds`` rounds, in a seeded shuffled
    order each round (so drift spreads evenly), the device synchronised around each call."""
    times: dict[str, list[float]] = {k: [] for k in items}
    cpu: dict[str, list[float]] = {k: [] for k in items}
    rng = random.Random(0)
    for index in range(rounds):
        order = list(items)
        rng.shuffle(order)
        for key in order:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            items[key]()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
            print(f"[{time.perf_counter() - started:7.1f}s] round {index + 1}: {key} "
                  f"{times[key][-1]:.2f}s wall, {cpu[key][-1]:.2f}s CPU", file=sys.stderr,
                  flush=True)
    return times, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the library's, by device")
    parser.add_argument("--also-batch", type=int, default=None,
                        help="also time our deletion at this batch size")
    parser.add_argument("--deletion-only", action="store_true",
                        help="time deletion (ours, Quantus) only: no floor, no insertion")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-quantus", action="store_true")
    parser.add_argument("--output", default=str(HERE / "results" / "metrics_cpu.md"))
    parser.add_argument("--sanity-from", default=None,
                        help="evaluation.json of `convlens evaluate --metric randomisation`")
    args = parser.parse_args(argv)
    if args.sanity_from:
        print(sanity_table(Path(args.sanity_from), HERE / "results" / "metrics_sanity.md"))
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from convlens.io.samples import sample_images

    clf = convlens.load_model(device=str(device))
    module = clf.module
    photos = list(sample_images().values())
    x = clf.preprocess([photos[i % len(photos)] for i in range(args.images)])
    x = torch.where(torch.arange(args.images, device=device).view(-1, 1, 1, 1)
                    // len(photos) % 2 == 1, x.flip(-1), x)  # flips give distinct photos
    from convlens.metrics.core import default_batch_size

    n = x.shape[0]
    b = args.batch_size or default_batch_size(device)
    maps = convlens.attribute(clf, x, "gradcam")  # (N, 1, 7, 7)
    up = torch.nn.functional.interpolate(maps, size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)
    # Upsampled maps have exact ties (mirror-symmetric interpolation weights; a ReLU'd CAM's
    # zeros), which the two tools order differently. A small jitter is not enough: in float32
    # it left 3,277 of 50,176 values tied and the curves 7.4e-3 apart. Both tools get the
    # map's ranks instead (ties broken by position): the same order, every value unique.
    order = torch.argsort(up.flatten(1), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    maps = up = ranks.to(up.dtype).reshape(up.shape)
    points = math.ceil(224 * 224 / 224) + 1
    batches = [min(b, n * points - s) for s in range(0, n * points, b)]
    pool = x[torch.arange(b, device=device) % n].clone()

    def floor(curves: int) -> None:
        with torch.no_grad():
            for _ in range(curves):
                for size in batches:
                    torch.softmax(module(pool[:size]), 1)

    results: dict[str, object] = {}

    def ours_both() -> None:
        results["deletion"] = M.deletion(module, x, maps, batch_size=b)
        results["insertion"] = M.insertion(module, x, maps, batch_size=b)

    def ours_deletion() -> None:
        M.deletion(module, x, maps, batch_size=b)

    def ours_deletion_only() -> None:
        results["deletion"] = M.deletion(module, x, maps, batch_size=b)

    items = {"ours: deletion": ours_deletion_only} if args.deletion_only else {
        "floor: 2 curves of forwards": lambda: floor(2),
        "ours: deletion + insertion": ours_both,
        "ours: deletion": ours_deletion}
    if args.also_batch:
        items[f"ours: deletion, batch {args.also_batch}"] = lambda: M.deletion(
            module, x, maps, batch_size=args.also_batch)
    if not args.skip_quantus:
        import quantus

        y = module(x[:1]).argmax(1)  # warm
        with torch.no_grad():
            y = module(x).argmax(1).cpu().numpy()
        # Quantus insists that its step divide H x W although it flips C x H x W channel
        # elements; 3 x 224 elements (224 whole pixels, the paper's setting) does not divide
        # 224 x 224, so that input check is switched off for this call (the computation is
        # Quantus's own).
        quantus.helpers.asserts.assert_features_in_step = lambda **_kwargs: None
        metric = quantus.PixelFlipping(features_in_step=3 * 224, perturb_baseline=0.0,
                                       disable_warnings=True, display_progressbar=False)

        def quantus_deletion() -> None:
            results["quantus"] = np.asarray(metric(
                model=module, x_batch=x.cpu().numpy(), y_batch=y, a_batch=up.cpu().numpy(),
                device=str(device), softmax=True, batch_size=b))

        items["quantus: PixelFlipping (deletion)"] = quantus_deletion
    with torch.no_grad():
        module(pool)  # warm-up forward
    started = time.perf_counter()
    times, cpu = _timed_rounds(items, args.rounds, device, started)
    # On a shared CPU the process's CPU time is the stable measure; on CUDA, wall time.
    clock = cpu if device.type == "cpu" else times
    med = {k: statistics.median(v) for k, v in clock.items()}
    walls = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# Deletion + insertion (preset rise) vs their forwards and vs Quantus", "",
        format_facts(machine_facts(device)), "",
        f"bundled EfficientNet-Lite0, {n} photos (the 4 samples and their mirror images) at "
        f"224 px, Grad-CAM maps, {points} points per curve, batch {b}, "
        f"{args.rounds} round(s), items shuffled per round; medians",
        "",
        f"times: {'process CPU time' if device.type == 'cpu' else 'wall time'} "
        "(wall time also listed; on a shared CPU it measures the neighbours)", "",
        "| item | seconds | wall seconds |", "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} | {walls[k]:.2f} |" for k, v in med.items()]
    lines += [""]
    if not args.deletion_only:
        lines += [f"- ours (deletion + insertion) / floor: "
                  f"{med['ours: deletion + insertion'] / med['floor: 2 curves of forwards']:.3f}"]
    if args.also_batch:
        other = f"ours: deletion, batch {args.also_batch}"
        lines += [f"- ours at batch {args.also_batch} / ours at batch {b} (deletion): "
                  f"{med[other] / med['ours: deletion']:.2f} CPU time, "
                  f"{walls[other] / walls['ours: deletion']:.2f} wall (medians)"]
    if "quantus" in results:
        q = med["quantus: PixelFlipping (deletion)"]
        ours_curve = results["deletion"].curves["deletion"][:, 1:]
        diff = float(np.abs(ours_curve - results["quantus"]).max())
        qw = walls["quantus: PixelFlipping (deletion)"]
        lines += [f"- Quantus PixelFlipping / ours (deletion): {q / med['ours: deletion']:.2f} "
                  f"CPU time ({q:.1f} s vs {med['ours: deletion']:.1f} s), "
                  f"{qw / walls['ours: deletion']:.2f} wall"]
        if not args.deletion_only:
            lines += [f"- Quantus / ours (deletion + insertion): "
                      f"{q / med['ours: deletion + insertion']:.1f}x"]
        lines += [
                  f"- largest difference between the two deletion curves: {diff:.2e} "
                  "(probability)"]
    deletion, insertion = results["deletion"], results.get("insertion")
    lines += [f"- mean deletion AUC {deletion.mean:.4f}" + (
        f", insertion AUC {insertion.mean:.4f}" if insertion is not None else ""),
              f"\nwall time {time.perf_counter() - started:.0f}s"]
    text = "\n".join(lines)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
