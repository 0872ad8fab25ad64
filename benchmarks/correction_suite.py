"""Does ``convlens correct`` remove a planted shortcut, and what does it cost?

For each scenario of the planted-shortcut suite (``shortcut_suite.py``: the same cached
models, the same test folder the audit sees): audit, pick the strategy a user would pick
(the one that is mostly artefact images; the audit's rank of it is printed), correct it, and
measure on a FRESH draw of the scenario's test images (same recipe, another random stream,
never audited):

* clean accuracy: on images without the artefact;
* the artefact's effect: clean accuracy minus accuracy on artefact-bearing images of the
  non-target classes (the issue's definition); the shrink is ``1 - after / before``;
* the cost: seconds for the correction (P-ClArC trains nothing; RR-ClArC and the last layer
  train on the scenario's own training split, the data the model learned the shortcut from,
  given as ``--data``; ``@audit`` trains on the audited images instead).

Methods are given as ``METHOD[:SHAPE][@audit]``, e.g. ``pclarc:map,rrclarc,last-layer@audit``.

The issue's bar: the effect shrinks by at least 80 % while clean accuracy drops by at most
1 point, on scenarios whose model learned the shortcut (shortcut rate >= 0.5).

Usage: ``python benchmarks/correction_suite.py [--only corner_tag,text] [--seeds 0]
[--methods pclarc:map,pclarc:channel,rrclarc,last-layer] [--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shortcut_suite as suite  # noqa: E402


def fresh_split(scenario: suite.Scenario) -> suite.Split:
    """The test recipe of ``scenario`` drawn from another random stream (never audited)."""
    salt = int(hashlib.sha256(scenario.name.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([scenario.seed, salt, 7])
    images, labels, flags = [], [], []
    for name, variant, count in suite._counts(scenario, train=False):
        artefact = None if variant is None else (scenario.kind, variant, scenario.position)
        for _ in range(count):
            images.append(suite.draw(name, artefact, rng))
            labels.append(suite.CLASSES.index(name))
            flags.append(variant is not None)
    return suite.Split(np.stack(images), np.array(labels), np.array(flags))


def measure(module: torch.nn.Module, split: suite.Split, scenario: suite.Scenario
            ) -> tuple[float, float, float]:
    """(clean accuracy, accuracy on other classes' artefact images, shortcut rate)."""
    x = suite._to_tensor(split.images)
    with torch.no_grad():
        predicted = module.eval()(x).argmax(1).numpy()
    targets = [suite.CLASSES.index(c) for c in scenario.target_classes]
    clean = ~split.artefact
    other = split.artefact & ~np.isin(split.labels, targets)
    return (float((predicted[clean] == split.labels[clean]).mean()),
            float((predicted[other] == split.labels[other]).mean()),
            float(np.isin(predicted[other], targets).mean()))


def parse(spec: str) -> tuple[str, str, bool]:
    """``METHOD[:SHAPE][@audit]`` -> (method, shape, train on the audit's images)."""
    own = spec.endswith("@audit")
    method, _, shape = spec.removesuffix("@audit").partition(":")
    return method, shape or "map", own


def run(scenario: suite.Scenario, cache: Path | None, specs: list[str]) -> dict:
    import convlens as cl
    from convlens.correction.run import correct

    model, _cached = suite.trained_model(scenario, cache)
    fresh = fresh_split(scenario)
    before = measure(model, fresh, scenario)
    row = {"scenario": scenario.name, "before": before, "after": {}, "rank": None}
    with tempfile.TemporaryDirectory(prefix="convlens-correct-") as tmp:
        data = Path(tmp) / "data"
        artefact = set(suite.write_test_folder(data, suite.make_split(scenario, train=False)))
        clf = cl.Classifier(model, labels=list(suite.CLASSES), input_size=suite.SIZE,
                            mean=(0, 0, 0), std=(1, 1, 1), resize="squash", device="cpu")
        audit = cl.audit(clf, data, out=Path(tmp) / "out", seed=scenario.seed, batch_size=64)
        shares = [(sum(m in artefact for m in s["members"]) / max(1, s["size"]), s)
                  for s in audit.data.get("strategies") or []]
        picked = [(share, s) for share, s in shares if share >= 0.5]
        if not picked:
            return row
        share, strategy = max(picked, key=lambda p: (p[0], -p[1]["id"]))
        row["rank"], row["strategy_share"] = strategy["id"], share
        train = Path(tmp) / "train"
        for spec in specs:
            method, shape, own = parse(spec)
            if method != "pclarc" and not own and not train.exists():
                suite.write_test_folder(train, suite.make_split(scenario, train=True))
            start = time.perf_counter()
            try:
                fixed = correct(clf, audit, strategy["id"], method=method, shape=shape,
                                data=None if method == "pclarc" or own else train,
                                seed=scenario.seed)
            except cl.ConvlensError as error:  # recorded, the suite goes on
                row.setdefault("errors", {})[spec] = str(error)
                print(f"{scenario.name} {spec}: {error}", flush=True)
                continue
            seconds = time.perf_counter() - start
            row["after"][spec] = (*measure(fixed.classifier.module, fresh, scenario), seconds)
    return row


def table(rows: list[dict], specs: list[str]) -> str:
    lines = ["| scenario | shortcut rate | strategy (id, artefact share) | clean before | effect "
             "before | " + " | ".join(f"{s}: clean / effect / shrink / s" for s in specs) + " |",
             "|---|---|---|---|---|" + "---|" * len(specs)]
    for row in rows:
        clean, art, rate = row["before"]
        cells = [row["scenario"], f"{rate:.2f}",
                 "-" if row["rank"] is None else f"{row['rank']}, {row['strategy_share']:.0%}",
                 f"{clean:.3f}", f"{clean - art:+.3f}"]
        for spec in specs:
            if spec not in row["after"]:
                cells.append("-")
                continue
            c2, a2, _r2, seconds = row["after"][spec]
            effect, after = clean - art, c2 - a2
            shrink = f"{1 - after / effect:.0%}" if effect >= 0.1 else "n/a"
            cells.append(f"{c2:.3f} / {after:+.3f} / {shrink} / {seconds:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict], specs: list[str]) -> list[str]:
    out = []
    learned = [r for r in rows if r["before"][2] >= 0.5 and r["before"][0]
               - r["before"][1] >= 0.1]
    for spec in specs:
        met = corrected = 0
        for row in learned:
            if spec not in row["after"]:
                continue
            corrected += 1
            clean, art, _ = row["before"]
            c2, a2, _r2, _s = row["after"][spec]
            if 1 - (c2 - a2) / (clean - art) >= 0.8 and c2 >= clean - 0.01:
                met += 1
        out.append(f"{spec}: the bar (effect -80 %, clean -1 point at most) met in {met} of "
                   f"{len(learned)} scenarios whose model learned the shortcut ({corrected} "
                   "had a strategy that is mostly artefact images to correct)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated artefact kinds")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--methods", default="pclarc:map,pclarc:channel,rrclarc,last-layer")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convlens-suite"
    kinds = set(args.only.split(",")) if args.only else None
    specs = args.methods.split(",")
    rows = []
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        for scenario in suite.scenarios(seed):
            if kinds and scenario.kind not in kinds:
                continue
            rows.append(run(scenario, cache, specs))
            print(rows[-1]["scenario"], rows[-1]["after"].keys(), flush=True)
    text = "\n".join([f"`python benchmarks/correction_suite.py {' '.join(argv or sys.argv[1:])}`"
                      f", {time.perf_counter() - start:.0f} s", "", table(rows, specs), "",
                      *verdicts(rows, specs)])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
