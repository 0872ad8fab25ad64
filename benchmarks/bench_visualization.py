"""Speed of one feature-visualization step against its floor (numbers for BENCHMARKS.md).

The floor is what a step cannot avoid: one forward and one backward to the input of the
same batch at the same size (no weight gradients). A step adds the parameterisation (an
inverse FFT and the colour mixing), the random transforms (pad, crop, resample, rotate)
and Adam. The issue asks for a step within 1.3x of the floor.

A step's time is the median interval between consecutive steps (``visualize``'s
``callback``), which leaves out the set-up and the first, counting pass (see render.py);
the floor's is the median of repeated forward+backward passes. Floor and steps alternate
over ``--rounds`` rounds and the medians are reported, so a machine busy with other work
biases both alike. On a shared machine, ``--clock cpu --threads 1`` measures the CPU time
this process spends, which other processes barely disturb.

Rows:

* ``class`` (full network) with the standard transforms, with Lucid's chain (two
  resamplings, images about 7% larger) and without transforms;
* ``channel blocks.8`` (the forward stops after blocks.8, the backward starts there),
  against the full floor and against the floor of the network up to blocks.8.

Usage::

    python benchmarks/bench_visualization.py                    # CPU, batch 16, 224 px
    python benchmarks/bench_visualization.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

import convlens as cl
from convlens import objectives as obj
from convlens._hooks import evaluation_mode

CLOCK = time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_seconds(module: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Median time of forward + backward to the input (no weight gradients)."""
    params = [p.requires_grad for p in module.parameters()]
    times = []
    try:
        for p in module.parameters():
            p.requires_grad_(False)
        with evaluation_mode(module):
            for _ in range(repeats):
                _sync(x.device)
                began = CLOCK()
                leaf = x.detach().requires_grad_(True)
                out = module(leaf)
                torch.autograd.grad(out.float().mean(), leaf)
                _sync(x.device)
                times.append(CLOCK() - began)
    finally:
        for p, flag in zip(module.parameters(), params):
            p.requires_grad_(flag)
    return statistics.median(times)


def step_seconds(clf: cl.Classifier, goals: list, size: int, transforms: str, steps: int
                 ) -> float:
    """Median seconds per optimisation step (the first, counting pass excluded)."""
    stamps: list[float] = []

    def stamp(step: int, images: torch.Tensor, values: torch.Tensor) -> None:
        _sync(clf.device)
        stamps.append(CLOCK())

    cl.visualize(clf, goals, size=size, steps=steps + 1, transforms=transforms,
                 progress=False, callback=stamp)
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per measurement.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (robust on a busy machine; use "
                             "with --threads 1)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = cl.load_model(device=args.device)
    device = clf.device
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    partial = nn.Sequential(clf.module.stem, *list(clf.module.blocks)[:9])  # up to blocks.8
    classes = [obj.class_logit(c) for c in range(args.batch)]
    channels = [obj.channel("blocks.8", c) for c in range(args.batch)]
    rows = {"full floor": [], "blocks.8 floor": [], "class, standard transforms": [],
            "class, lucid transforms": [], "class, no transforms": [],
            "channel blocks.8, standard": []}
    floor_seconds(clf.module, x, 1)  # warm-up
    step_seconds(clf, classes, args.size, "none", 1)
    for _ in range(args.rounds):
        rows["full floor"].append(floor_seconds(clf.module, x, args.steps))
        rows["class, standard transforms"].append(
            step_seconds(clf, classes, args.size, "standard", args.steps))
        rows["class, lucid transforms"].append(
            step_seconds(clf, classes, args.size, "lucid", args.steps))
        rows["class, no transforms"].append(
            step_seconds(clf, classes, args.size, "none", args.steps))
        rows["blocks.8 floor"].append(floor_seconds(partial, x, args.steps))
        rows["channel blocks.8, standard"].append(
            step_seconds(clf, channels, args.size, "standard", args.steps))
    median = {name: statistics.median(values) for name, values in rows.items()}
    full, part = median["full floor"], median["blocks.8 floor"]
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"{clf.name} on {device} (threads {threads}, {args.clock} clock); batch {args.batch}, "
          f"{args.size} px; "
          f"medians of {args.rounds} rounds of {args.steps} timed steps/passes")
    print(f"{'':34} {'s/step':>8} {'x full floor':>12} {'x own floor':>11}")
    for name, value in median.items():
        own = part if "blocks.8" in name else full
        print(f"{name:34} {value:8.3f} {value / full:12.2f} {value / own:11.2f}")
    worst = max(median["class, standard transforms"] / full,
                median["channel blocks.8, standard"] / part)
    print(f"worst step / its floor: {worst:.2f} (target <= 1.3): "
          f"{'PASS' if worst <= 1.3 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
