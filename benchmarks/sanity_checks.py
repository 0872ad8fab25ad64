"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation that explains the *model* must change when the model's learned weights are
destroyed. Cascading randomisation: starting from the output, re-initialise the classifier,
then additionally the head convolution, ``blocks.15``, ``blocks.14``, ... down to the stem,
always on a deep copy of the bundled EfficientNet-Lite0 (the original is checked unchanged at
the end). After each stage, every method's map for the same images and the same target (the
original model's prediction) is compared with the map of the trained model by Spearman rank
correlation, on the 2-D presentation map: the method's own map (``Method.to_map``: channels
reduced by the method's ``channel_reduction``, RISE's offset removed; layer-space maps bilinearly
upsampled to the input size), then the absolute value, as in the paper. A low correlation
means the method is sensitive to the weights (it passes); a method whose maps barely change
(guided backprop in the paper) is mostly showing the input.

Re-initialisation follows the model's own (TensorFlow EfficientNet) scheme, drawn from a seeded
``torch.Generator``: convolution kernels ~ N(0, 2 / fan_out), the classifier ~ U(+-1/sqrt(1000)),
biases 0, BatchNorm to its identity (weight 1, bias 0, running mean 0, running variance 1).

Usage::

    .venv/bin/python benchmarks/sanity_checks.py            # writes benchmarks/results/sanity.md
    .venv/bin/python benchmarks/sanity_checks.py --quick    # 1 image, 3 stages, 4 methods
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import format_facts, machine_facts  # noqa: E402

import convlens  # noqa: E402

# Options that keep each stage affordable on 2 CPU cores (documented in the output).
OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 8},
    "vargrad": {"samples": 8},
    "gradient_shap": {"samples": 8},
    "occlusion": {"window": 56, "stride": 56},
    "rise": {"masks": 128},
}
# One pass per channel (1280 at the default layer) or thousands of masks: skipped by default.
EXPENSIVE = ("scorecam", "ablationcam", "rise")
FIRST = ("gradcam", "saliency", "guided_backprop", "integrated_gradients")


def units(model: nn.Module) -> list[str]:
    """Top-level units from the output down: classifier, head, blocks.15, ..., blocks.0, stem."""
    blocks = [f"blocks.{i}" for i in reversed(range(len(model.blocks)))]
    return ["classifier", "head", *blocks, "stem"]


def reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter of ``module`` as at initialisation (see the module docstring)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d):
                fan_out = sub.out_channels // sub.groups * sub.kernel_size[0] * sub.kernel_size[1]
                sub.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, nn.Linear):
                bound = 1.0 / math.sqrt(sub.out_features)
                sub.weight.uniform_(-bound, bound, generator=generator)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, nn.BatchNorm2d):
                sub.weight.fill_(1.0)
                sub.bias.zero_()
                sub.running_mean.zero_()
                sub.running_var.fill_(1.0)


def presentation(method: convlens.Method, attribution: torch.Tensor, size: tuple[int, int]
                 ) -> np.ndarray:
    """(N, H, W) |the method's map| (``Method.to_map``), layer maps upsampled to the input."""
    return method.to_map(attribution.detach().float().cpu(), size).abs().numpy()


def fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def rank_correlations(reference: np.ndarray, other: np.ndarray) -> list[float | None]:
    """Spearman rho per image; None where either map is constant (no ranking left)."""
    out: list[float | None] = []
    for a, b in zip(reference, other):
        a, b = a.ravel(), b.ravel()
        if np.ptp(a) == 0 or np.ptp(b) == 0 or not np.isfinite(b).all():
            out.append(None)
        else:
            out.append(float(spearmanr(a, b).statistic))
    return out


def choose_methods(requested: str | None, include_all: bool) -> tuple[list[convlens.Method],
                                                                      list[str]]:
    registered = {m.name: m for m in convlens.methods()}
    notes = []
    if requested:
        names = requested.split(",")
    else:
        names = [n for n in FIRST if n in registered] + [
            n for n in registered if n not in FIRST and (include_all or n not in EXPENSIVE)]
        notes += [f"{n}: skipped (one pass per channel / thousands of masks per stage; --all "
                  "includes it)" for n in EXPENSIVE if n in registered and not include_all]
    for name in FIRST:
        if name not in registered:
            notes.append(f"{name}: not registered at the time of this run, skipped")
    return [registered[n] for n in names if n in registered], notes


def _stages(args: argparse.Namespace, order: list[str], parser: argparse.ArgumentParser
            ) -> list[str]:
    """The units at which to report: ``--stages``, three under ``--quick``, else every unit;
    an unknown one is a usage error listing the valid ones."""
    if args.stages:
        report = args.stages.split(",")
    elif args.quick:
        report = ["classifier", "head", "blocks.14"]
    else:
        report = order
    unknown = [s for s in report if s not in order]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; valid: {', '.join(order)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=None, help="comma-separated (default: all cheap)")
    parser.add_argument("--all", action="store_true", help="include the expensive methods")
    parser.add_argument("--images", type=int, default=4, help="how many sample photos")
    parser.add_argument("--stages", default=None,
                        help="comma-separated units at which to report (cumulative anyway)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(HERE / "results" / "sanity.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    from convlens.io.samples import sample_images

    clf = convlens.load_model(device="cpu")
    model = clf.module
    samples = sample_images()
    names = list(samples)[: (1 if args.quick else args.images)]
    x = clf.preprocess([samples[n] for n in names])
    with torch.no_grad():
        targets = model(x).argmax(1)
    methods, notes = choose_methods(
        "gradcam,saliency,guided_backprop,integrated_gradients" if args.quick and not
        args.methods else args.methods, args.all)
    order = units(model)
    report = _stages(args, order, parser)
    before = fingerprint(model)
    size = tuple(x.shape[-2:])
    labels = [clf.labels[int(t)] for t in targets] if clf.labels else [str(int(t))
                                                                         for t in targets]

    def maps_of(net: nn.Module) -> dict[str, np.ndarray]:
        out = {}
        for method in methods:
            options = {k: v for k, v in OPTIONS.get(method.name, {}).items()
                       if k in method.options}
            try:
                a = convlens.attribute(net, x, method.name, target=targets.tolist(), **options)
                out[method.name] = presentation(method, a, size)
            except Exception as error:  # a method that cannot run on this model
                notes.append(f"{method.name}: {type(error).__name__}: {error}")
        return out

    original = maps_of(model)
    signed_ref = {}
    table: dict[str, dict[str, list[float | None]]] = {m: {} for m in original}
    randomised = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(args.seed)
    done = 0
    for stage in report:
        stop = order.index(stage)
        for unit in order[done: stop + 1]:
            reinitialise(randomised.get_submodule(unit), generator)
        done = max(done, stop + 1)
        current = maps_of(randomised)
        for name, maps in current.items():
            table[name][stage] = rank_correlations(original[name], maps)
        print(f"[{time.perf_counter() - started:6.1f}s] stage {stage} done", file=sys.stderr,
              flush=True)
    del signed_ref
    after = fingerprint(model)

    def cell(values: list[float | None]) -> str:
        const = any(v is None for v in values)
        numbers = [0.0 if v is None else v for v in values]
        return f"{np.mean(numbers):.2f}" + ("*" if const else "")

    header_stages = [("+" if i else "") + s for i, s in enumerate(report)]
    lines = [
        "# Model-randomisation sanity check (Adebayo et al. 2018), cascading", "",
        format_facts(machine_facts(torch.device("cpu"))), "",
        f"model: bundled EfficientNet-Lite0; images: {', '.join(names)} (targets: the trained "
        f"model's predictions, fixed: {', '.join(labels)})",
        "cell = mean over images of Spearman rho between |2-D map| of the trained model and of "
        "the model with every unit from the classifier down to the column's unit re-initialised "
        "(cumulative, left to right). Lower = more sensitive to the weights. * = at least one "
        "randomised map was constant (no ranking left), counted as rho 0.",
        "options: " + ", ".join(f"{m}({', '.join(f'{k}={v}' for k, v in o.items())})"
                                for m, o in OPTIONS.items() if m in table),
        "",
        "| method | " + " | ".join(header_stages) + " |",
        "|---|" + "---|" * len(report),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(cell(row[s]) for s in report) + " |")
    lines.append("")
    verdict_stage = "blocks.14" if "blocks.14" in report else report[-1]
    for name in ("gradcam", "saliency"):
        if name in table:
            rho = float(np.mean([0.0 if v is None else v for v in table[name][verdict_stage]]))
            lines.append(f"- {name} after re-initialising down to {verdict_stage}: rho {rho:.2f} "
                         f"({'< 0.5: passes' if rho < 0.5 else '>= 0.5: FAILS'} the expectation)")
    if "guided_backprop" in table and "gradcam" in table:
        gbp = float(np.mean([0.0 if v is None else v
                             for v in table["guided_backprop"][verdict_stage]]))
        lines.append(f"- guided_backprop at the same stage: rho {gbp:.2f} (expected: changes far "
                     "less than gradcam / saliency)")
    lines.append(f"- original model unchanged: {before == after} (state fingerprint {before})")
    if notes:
        lines += ["", "notes:"] + [f"- {n}" for n in notes]
    lines.append(f"\nwall time {time.perf_counter() - started:.0f}s")
    text = "\n".join(lines)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + "\n")
    return 0 if before == after else 1


if __name__ == "__main__":
    sys.exit(main())
