"""Time per image of the coalition methods against Captum at the same number of evaluations.

On the bundled EfficientNet-Lite0 (224 px, the "chelsea" sample), with the same SLIC
segments for both (``convlens.attribution.superpixels.segment``, passed to Captum as
``feature_mask``), the same baseline (0) and the same target. Per method:

* ``feature_ablation``: ours vs ``FeatureAblation`` (both K + 1 forwards);
* ``shapley_sampling``: ours vs ``ShapleyValueSampling`` at the same permutations (ours
  2 + P (K - 1) forwards, Captum's 1 + P K: the forwards are counted and printed);
* ``kernel_shap``: ours vs ``KernelShap`` at the same number of samples;
* ``lime``: ours vs ``Lime`` with ``SkLearnRidge(alpha=1)`` and our kernel on the binary
  vector, at the same number of samples.

Both get the precomputed segments (``segments=`` for ours), so the segmentation, timed on
its own, is not in either time. Each method is timed next to its **floor**: our number of
gradient-free forwards in chunks of ``batch_size`` (64, Captum's ``perturbations_per_eval``
too), with nothing else. Captum's calls run under ``torch.no_grad()``. In each round the
methods run in shuffled order, a method's three calls back to back (shuffled), so ratios
are paired; one cheap warm-up call each (2 features) instead of an untimed full round.

Defaults are small (25 segments, 1 permutation, 48 samples) because the cost per forward,
not the setting, is what is compared; time per image scales with the forwards column.

Usage::

    .venv/bin/python benchmarks/bench_superpixels.py --rounds 2  # ~10 min on 2 busy cores
    .venv/bin/python benchmarks/bench_superpixels.py --quick     # tiny settings, smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _timing import Timed, format_facts, machine_facts, paired_ratio  # noqa: E402

import convlens  # noqa: E402
from convlens.attribution.superpixels import segment  # noqa: E402

RESULTS = HERE / "results"


def _captum_runners(model, x, target, segments, settings, batch):
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import FeatureAblation, KernelShap, Lime, ShapleyValueSampling

    mask = segments.unsqueeze(1)
    width = 0.25

    def kernel(_original, _perturbed, interpretable, **_):
        z = interpretable.double().flatten()
        distance = 1 - z.sum().sqrt() / math.sqrt(z.numel())
        return torch.exp(-distance ** 2 / (2 * width ** 2))

    def run(fn):
        def call():
            torch.manual_seed(0)
            with torch.no_grad():
                return fn()
        return call

    common = {"target": target, "feature_mask": mask, "perturbations_per_eval": batch}
    return {
        "feature_ablation": run(lambda: FeatureAblation(model).attribute(x, **common)),
        "shapley_sampling": run(lambda: ShapleyValueSampling(model).attribute(
            x, n_samples=settings["shapley_sampling"]["permutations"], **common)),
        "kernel_shap": run(lambda: KernelShap(model).attribute(
            x, n_samples=settings["kernel_shap"]["samples"], **common)),
        "lime": run(lambda: Lime(model, interpretable_model=SkLearnRidge(alpha=1.0),
                                 similarity_func=kernel).attribute(
            x, n_samples=settings["lime"]["samples"], **common)),
    }


def evaluations(method: str, features: int, settings: dict) -> tuple[int, int]:
    """Forwards per image: (ours, Captum's)."""
    if method == "feature_ablation":
        return features + 1, features + 1
    if method == "shapley_sampling":
        p = settings[method]["permutations"]
        return 2 + p * (features - 1), 1 + p * features
    s = settings[method]["samples"]
    ours = 2 + min(s, 2 ** features - 2) if method == "kernel_shap" else s + 1
    return ours, s + 1


def _timed_rounds(rows: list, seg_timer: Timed, rounds: int, log) -> None:
    """Time every runner ``rounds`` times, methods and runners in a seeded shuffled order
    each round (so drift spreads evenly); a runner that raises keeps its error, not a time."""
    order = random.Random(0)
    for index in range(rounds):
        shuffled = list(rows)
        order.shuffle(shuffled)
        for method, *_, items in shuffled:
            members = list(items.values())
            order.shuffle(members)
            for item in members:
                begin = time.perf_counter()
                try:
                    item.fn()
                except Exception as error:  # a peer that fails is reported, not fatal
                    item.error = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    continue
                item.times.append(time.perf_counter() - begin)
                item.by_round[index] = item.times[-1]
            log(f"round {index + 1}: {method} done")
        begin = time.perf_counter()
        seg_timer.fn()
        seg_timer.times.append(time.perf_counter() - begin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--samples", type=int, default=48, help="KernelSHAP and LIME samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-segments", type=int, default=25)
    parser.add_argument("--out", type=Path, default=RESULTS / "superpixels_cpu.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from convlens.io.samples import sample_images

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    clf = convlens.load_model(device="cpu")
    model = clf.module
    x = clf.preprocess([sample_images()["chelsea"]])
    with torch.no_grad():
        target = int(model(x).argmax(1))
    batch = 64
    if args.quick:
        settings = {"feature_ablation": {}, "shapley_sampling": {"permutations": 1},
                    "kernel_shap": {"samples": 16}, "lime": {"samples": 16}}
        n_segments, rounds = 8, 1
    else:
        settings = {"feature_ablation": {}, "shapley_sampling": {"permutations": 1},
                    "kernel_shap": {"samples": args.samples}, "lime": {"samples": args.samples}}
        n_segments, rounds = args.n_segments, args.rounds
    segments = segment(x, "slic", n_segments=n_segments)
    features = int(segments.max()) + 1
    log(f"SLIC gave {features} segments; target {target} ({clf.labels[target]})")
    facts = machine_facts(torch.device("cpu"))

    fill = torch.zeros_like(x)

    def floor(count: int):
        def call():
            with torch.no_grad():
                for start in range(0, count, batch):
                    model(fill.expand(min(batch, count - start), -1, -1, -1))
        return call

    peers = _captum_runners(model, x, [target], segments, settings, batch)
    rows = []
    for method, options in settings.items():
        ours_n, theirs_n = evaluations(method, features, settings)
        items = {
            "ours": Timed(f"ours:{method}", lambda m=method, o=options: convlens.attribute(
                clf, x, m, target=target, segments=segments, batch_size=batch, **o), rounds),
            "floor": Timed(f"floor:{method}", floor(ours_n), rounds),
            "captum": Timed(f"captum:{method}", peers[method], rounds),
        }
        rows.append((method, options, ours_n, theirs_n, items))
    seg_timer = Timed("segment", lambda: segment(x, "slic", n_segments=n_segments), rounds)
    # Warm-up on 2 features (imports, first-call allocations), not at full cost: the
    # shared machines these run on cannot afford a full untimed round.
    small = torch.zeros_like(segments)
    small[:, :, 112:] = 1
    warm = {"feature_ablation": {}, "shapley_sampling": {"permutations": 1},
            "kernel_shap": {"samples": 2}, "lime": {"samples": 2}}
    for method, options in warm.items():
        convlens.attribute(clf, x, method, target=target, segments=small, **options)
    for peer in _captum_runners(model, x, [target], small, {**settings, **{
            "shapley_sampling": {"permutations": 1}, "kernel_shap": {"samples": 2},
            "lime": {"samples": 2}}}, batch).values():
        peer()
    floor(1)()
    seg_timer.fn()
    log("warmed up")
    _timed_rounds(rows, seg_timer, rounds, log)

    lines = ["# Coalition methods vs Captum, per image", "", format_facts(facts),
             f"EfficientNet-Lite0, 224 px, 'chelsea', SLIC n_segments={n_segments} -> "
             f"{features} features, batch_size = perturbations_per_eval = {batch}, "
             f"{rounds} timed rounds, medians; ratios paired per round. floor = our number of "
             "forwards at batch 64 and nothing else.", "",
             "| method | settings | forwards ours / Captum | ours s | floor s | ours/floor "
             "| Captum s | ours/Captum | per forward ours / Captum ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    record = {"facts": facts, "features": features, "rows": []}
    for method, options, ours_n, theirs_n, items in rows:
        ours, cap = items["ours"], items["captum"]

        def fmt(value, digits=2):
            return "n/a" if value is None else f"{value:.{digits}f}"

        ratio = paired_ratio(ours, cap)
        lines.append(
            f"| {method} | {options or '-'} | {ours_n} / {theirs_n} | {fmt(ours.median)} | "
            f"{fmt(items['floor'].median)} | {fmt(paired_ratio(ours, items['floor']))} | "
            f"{fmt(cap.median) if cap.error is None else cap.error} | {fmt(ratio)} | "
            f"{fmt(ours.median and 1000 * ours.median / ours_n, 1)} / "
            f"{fmt(cap.median and 1000 * cap.median / theirs_n, 1)} |")
        record["rows"].append({"method": method, "options": options, "forwards": ours_n,
                               "captum_forwards": theirs_n, "ours_s": ours.times,
                               "floor_s": items["floor"].times, "captum_s": cap.times,
                               "captum_error": cap.error})
    lines += ["", f"segmentation (SLIC, one 224 px image): {seg_timer.median:.3f} s"]
    record["segment_s"] = seg_timer.times
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
