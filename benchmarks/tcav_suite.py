"""TCAV on the planted tag shortcut over held-out seeds: is the planted concept significant for
the class that uses it, and a random concept not?

    python benchmarks/tcav_suite.py --seeds 10

Per seed the planted net of tests/planted_bias.py is retrained (``train(training_counts(),
seed=s)``: half the training squares carry a bright tag in the corner, nothing else does), then
``cl.tcav`` at ``features.4`` (the second block's ReLU, 32 x 16 x 16; at the last block,
before global pooling and a linear head, every image has the same gradient and a score can
only be 0 or 1) with ``runs`` random runs:

* planted: the concept is 20 noise images carrying the tag, the random counterexamples 100
  plain noise images, the tested images 30 untagged squares (seeded per seed);
* random: the concept is 20 other plain noise images, everything else the same.

A hit is ``p < alpha`` (default 0.01) with score > 0.5 for "square" (planted), and ``p >=
alpha`` (random). Rates are printed for the linear CAV and FastCAV; raw rows go to
benchmarks/results/tcav_suite.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import planted_bias as pb  # noqa: E402

import convlens as cl  # noqa: E402


def noise(count: int, tagged: bool, seed: int) -> torch.Tensor:
    """Plain noise images (the planted set's background), with the tag when ``tagged``."""
    rng = np.random.default_rng(seed)
    images = rng.normal(40, 12, (count, pb.SIZE, pb.SIZE, 3))
    if tagged:
        end = pb.SIZE - pb.TAG_MARGIN
        images[:, end - pb.TAG:end, end - pb.TAG:end] = 255
    return pb.to_tensor(np.clip(images, 0, 255).astype(np.uint8))


def one_seed(seed: int, runs: int, alpha: float, layer: str) -> list[dict]:
    model = pb.train(pb.training_counts(), seed=seed)
    classifier = cl.Classifier(model, labels=pb.CLASSES, input_size=32, mean=(0, 0, 0),
                               std=(1, 1, 1), resize="squash", device="cpu")
    squares = pb.to_tensor(pb.make_set({("square", False): 30}, seed=1000 + seed)[0])
    pool = noise(100, False, seed=2000 + seed)
    cases = {"planted": noise(20, True, seed=3000 + seed),
             "random": noise(20, False, seed=4000 + seed)}
    rows = []
    for case, concept in cases.items():
        start = time.perf_counter()
        result = cl.tcav(classifier, concept, layer, ["square"], images=squares, random=pool,
                         runs=runs, seed=seed, alpha=alpha)
        seconds = time.perf_counter() - start
        for row in result.rows:
            hit = (row["p_value"] < alpha and row["score"] > 0.5 if case == "planted"
                   else row["p_value"] >= alpha)
            rows.append({"seed": seed, "case": case, "cav": row["cav"], "score": row["score"],
                         "random_score": row["random_score"], "p_value": row["p_value"],
                         "hit": bool(hit), "seconds": round(seconds, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--layer", default="features.4")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    rows = []
    for seed in range(args.seeds):
        found = one_seed(seed, args.runs, args.alpha, args.layer)
        rows += found
        print("seed", seed, " ".join(f"{r['case']}/{r['cav']}: score {r['score']:.2f} "
                                     f"(random {r['random_score']:.2f}) p={r['p_value']:.1e}"
                                     for r in found), flush=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / "tcav_suite.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"\n{args.seeds} seeds, {args.runs} runs, layer {args.layer}, alpha {args.alpha}")
    for case, wanted in (("planted", "significant for square"), ("random", "not significant")):
        for kind in ("linear", "fastcav"):
            hits = [r["hit"] for r in rows if r["case"] == case and r["cav"] == kind]
            print(f"{case:8s} {kind:8s} {wanted}: {sum(hits)}/{len(hits)}")


if __name__ == "__main__":
    main()
