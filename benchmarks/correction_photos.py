"""Does ``convlens correct`` take an overlay out of a real model? (convlens 12, the issue's proof)

The real-model cases of the planted-shortcut suite (``shortcut_photos.py``: the bundled
EfficientNet-Lite0, offline; an overlay drawn on a seeded half of 64 photo crops; every label
is the model's prediction on the clean photo, so every mistake is the overlay's doing). Per
overlay kind and seed:

1. build the case and audit it with ``cl.audit`` (as ``shortcut_photos.py`` does);
2. pick the overlay strategy as a user would from the report: of the strategies that are
   mostly overlay-induced mistakes, the one holding the most of them (ties: the better rank);
   its rank (its id) is printed;
3. ``cl.correct`` it for each ``--methods`` x ``--shapes`` x ``--layers`` (``audit``: the
   audit's layer);
4. measure on a FRESH draw: ``--fresh`` photos of the same recipe from another random stream
   (``make_inputs(..., stream=FRESH_STREAM)``, none of them audited), each seen clean and with
   the overlay, by the original and by every corrected model:

   * *overlay changes*: the share of photos whose prediction the overlay changes (the model's
     prediction on the overlaid photo against its own on the same photo clean), with its
     Wilson 95 % interval; also the share pulled *into* the strategy's class;
   * *clean agreement*: the corrected model's clean predictions equal to the original's
     (= clean accuracy, the labels being the original's clean predictions);
5. ``gather_evidence`` (``correction/evidence.py``) re-audits the corrected model on the
   audited data: is the overlay strategy still reported first (the first strategy is mostly
   the re-audited model's overlay-induced mistakes), is it still found at all (the evidence's
   match: >= 50 % of the original members, and they >= 50 % of it), which strategies grew.

Every step is timed. A full run took 23 minutes on the 2-core development box shared with
two other engineers' jobs (load 4-5; the re-audits are most of it); one case with both shapes
takes about 80-90 s when the box is quiet. Run::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        python benchmarks/correction_photos.py --out benchmarks/results/correction_photos_cpu.md
    python benchmarks/correction_photos.py --kinds cat_sticker --layers audit,blocks.15 --seeds 0,1

``--methods`` takes correction methods by name (``pclarc`` today; training methods join
when ``cl.correct`` knows them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent / "src") not in sys.path:
    sys.path.insert(0, str(HERE.parent / "src"))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import shortcut_photos as photos  # noqa: E402

FRESH_STREAM = 72          # make_inputs' stream for the fresh draw (the audited one is 71)
FRESH = 64                 # fresh photos per case, each seen clean and overlaid
SURE = 0.5                 # a "sure" photo: the original model's clean top-1 probability
MOSTLY = 0.5               # a strategy is "the overlay's" when this share of it is overlay mistakes


# ----------------------------------------------------------------------------- fresh draw

@dataclass
class Fresh:
    """Fresh photos of a case's recipe: the preprocessed clean and overlaid inputs."""

    clean: Any                 # (N, 3, h, w) preprocessed
    overlaid: Any
    covered: Any               # the overlay's region filled with the photo's mean colour
    count: int


def fresh_draw(kind: str, position: str, count: int, seed: int, classifier: Any,
               audited: Sequence[np.ndarray]) -> Fresh:
    """``count`` photos drawn from :data:`FRESH_STREAM` (any that equals an audited input is
    dropped), each also overlaid with ``kind`` as the case draws it."""
    seen = {hashlib.sha256(a.tobytes()).hexdigest() for a in audited}
    inputs = [a for a in photos.make_inputs(count + 8, seed, stream=FRESH_STREAM)
              if hashlib.sha256(a.tobytes()).hexdigest() not in seen][:count]
    rng = np.random.default_rng([seed, photos.KINDS.index(kind), 7])
    overlaid, covered = [], []
    for image in inputs:
        drawn, mask = photos.draw_overlay(image, kind, position, rng)
        overlaid.append(drawn)
        hidden = image.copy()      # the control: the region filled with the photo's mean
        hidden[mask] = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
        covered.append(hidden)
    return Fresh(classifier.preprocess(list(inputs)), classifier.preprocess(overlaid),
                 classifier.preprocess(covered), len(inputs))


def predict(classifier: Any, x: Any, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 index and its probability for preprocessed ``x``."""
    import torch

    from convlens._hooks import evaluation_mode

    top, prob = [], []
    with torch.no_grad(), evaluation_mode(classifier.module):
        for start in range(0, len(x), batch_size):
            p = classifier.module(x[start:start + batch_size].to(classifier.device)
                                  ).softmax(1).cpu()
            value, index = p.max(1)
            top.append(index.numpy())
            prob.append(value.numpy())
    return np.concatenate(top), np.concatenate(prob)


def rate(hits: np.ndarray) -> dict[str, Any]:
    """A share with its Wilson 95 % interval."""
    from convlens.auditing.causal import wilson

    n, k = int(hits.size), int(hits.sum())
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "ci": wilson(k, n)}


def fresh_effect(classifier: Any, fresh: Fresh, original: tuple[np.ndarray, np.ndarray],
                 target: int) -> dict[str, Any]:
    """The overlay's effect on ``classifier`` over the fresh photos; ``original`` is the
    original model's clean (top-1, probability)."""
    clean, _ = predict(classifier, fresh.clean)
    over, _ = predict(classifier, fresh.overlaid)
    hidden, _ = predict(classifier, fresh.covered)
    label, confidence = original
    sure = confidence >= SURE
    changed = over != clean
    return {"changed": rate(changed), "changed_sure": rate(changed[sure]),
            "covered": rate(hidden != clean),
            "into_class": rate((over == target) & (clean != target)),
            "clean_agree": rate(clean == label), "overlaid_agree": rate(over == label)}


# ----------------------------------------------------------------------------- strategies

def overlay_share(entry: dict[str, Any], mistakes: set[str]) -> float:
    members = entry.get("members") or []
    return sum(m in mistakes for m in members) / len(members) if members else 0.0


def pick_strategy(data: dict[str, Any], mistakes: set[str]) -> dict[str, Any] | None:
    """The strategy a user would pick: of those mostly (>= :data:`MOSTLY`) overlay-induced
    mistakes, the one holding the most of them, then the better rank (a one-image strategy
    is 100 % mistakes but no user's pick over one that gathers ten); when none is mostly
    mistakes, the one holding the most. None when no strategy holds any."""
    scored = [(overlay_share(s, mistakes) >= MOSTLY,
               sum(m in mistakes for m in s.get("members") or []), -int(s["id"]), s)
              for s in data.get("strategies") or []]
    scored = [t for t in scored if t[1] > 0]
    return max(scored, key=lambda t: t[:3])[3] if scored else None


def audit_mistakes(data: dict[str, Any], artefact: set[str]) -> set[str]:
    """Overlaid photos the audited model gets wrong (labels: the original clean predictions)."""
    return {r["path"] for r in data.get("images") or [] if r["path"] in artefact
            and r.get("label") is not None and r.get("predicted") != r.get("label")}


def first_is_overlay(data: dict[str, Any], mistakes: set[str]) -> bool:
    strategies = data.get("strategies") or []
    return bool(strategies) and overlay_share(strategies[0], mistakes) >= MOSTLY


# ----------------------------------------------------------------------------- one case

@dataclass
class Row:
    """One correction of one case."""

    kind: str
    seed: int
    method: str
    shape: str
    layer: str
    strategy: int | None = None
    share: float = 0.0
    recall: float = 0.0
    mistakes: int = 0
    first_before: bool = False
    classes: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    reaudit: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""


def run_case(kind: str, seed: int, classifier: Any, *, count: int, fresh_count: int,
             methods: Sequence[str], shapes: Sequence[str], layers: Sequence[str],
             position: str = "fixed", batch_size: int = 32, log: Any = print) -> list[Row]:
    """Build, audit, pick, correct and measure one overlay case; one row per correction."""
    import convlens as cl
    from convlens.correction.evidence import gather_evidence
    from convlens.errors import ConvlensError

    scenario = photos.PhotoScenario(kind, position, count, seed)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="convlens-correct-photos-") as tmp:
        t = time.perf_counter()
        case = photos.build_case(scenario, Path(tmp) / "data", classifier, batch_size)
        built = time.perf_counter() - t
        t = time.perf_counter()
        audit = cl.audit(classifier, case.csv, out=Path(tmp) / "audit", seed=seed,
                         batch_size=batch_size)
        audited = time.perf_counter() - t
        t = time.perf_counter()
        fresh = fresh_draw(kind, position, fresh_count, seed,
                           classifier, list(case.clean.values()))
        original = predict(classifier, fresh.clean)
        drawn = time.perf_counter() - t
        artefact = set(case.artefact)
        mistakes = audit_mistakes(audit.data, artefact)
        entry = pick_strategy(audit.data, mistakes)
        base = dict(kind=kind, seed=seed, mistakes=len(mistakes),
                    first_before=first_is_overlay(audit.data, mistakes))
        log(f"{scenario.name}: {len(mistakes)} overlay-induced mistakes; "
            + ("no strategy holds any" if entry is None else
               f"picked strategy {entry['id']} of {len(audit.data.get('strategies') or [])} "
               f"({overlay_share(entry, mistakes):.0%} overlay mistakes, size "
               f"{len(entry['members'])}); build {built:.0f} s, audit {audited:.0f} s"))
        if entry is None:
            return [Row(method=m, shape=s, layer=lay, error="no strategy", **base)
                    for m in methods for s in shapes for lay in layers]
        members = set(entry["members"])
        target_name = photos_target(audit.data, members)
        target = classifier.labels.index(target_name) if target_name in classifier.labels \
            else -1
        t = time.perf_counter()
        before = fresh_effect(classifier, fresh, original, target)
        measured = time.perf_counter() - t + drawn
        for method in methods:
            for shape in shapes:
                for layer in layers:
                    row = Row(method=method, shape=shape,
                              layer=audit.data.get("layer") if layer == "audit" else layer,
                              strategy=int(entry["id"]),
                              share=overlay_share(entry, mistakes),
                              recall=len(members & mistakes) / max(len(mistakes), 1),
                              before=before, **base)
                    row.seconds = {"build": built, "audit": audited, "fresh_before": measured}
                    try:
                        t = time.perf_counter()
                        fixed = cl.correct(classifier, audit, row.strategy, method=method,
                                           layer=None if layer == "audit" else layer,
                                           shape=shape, batch_size=batch_size)
                        row.seconds["correct"] = time.perf_counter() - t
                    except ConvlensError as error:
                        row.error = str(error)
                        rows.append(row)
                        log(f"  {method}/{shape}/{layer}: {error}")
                        continue
                    row.layer = fixed.direction.layer
                    row.classes = ", ".join(f"{k} {m}/{o}" for k, (m, o)
                                            in fixed.direction.classes.items())
                    t = time.perf_counter()
                    row.after = fresh_effect(fixed.classifier, fresh, original, target)
                    row.seconds["fresh_after"] = time.perf_counter() - t
                    t = time.perf_counter()
                    out = Path(tmp) / f"fixed-{method}-{shape}-{row.layer}"
                    evidence = gather_evidence(classifier, fixed.classifier, audit, row.strategy,
                                               out=out, seed=seed, batch_size=batch_size)
                    row.seconds["evidence"] = time.perf_counter() - t
                    row.reaudit = reaudit_summary(evidence, out / "audit-after", artefact)
                    rows.append(row)
                    log("  " + row_line(row))
    return rows


def photos_target(data: dict[str, Any], members: set[str]) -> str:
    """The strategy's class: what most of its members are predicted as (as the evidence)."""
    from collections import Counter

    counts = Counter(str(r.get("predicted")) for r in data.get("images") or []
                     if r["path"] in members)
    return counts.most_common(1)[0][0] if counts else ""


def reaudit_summary(evidence: dict[str, Any], folder: Path, artefact: set[str]
                    ) -> dict[str, Any]:
    """What the re-audit says: is the first strategy the overlay's, is the original found."""
    import json

    after = json.loads((folder / "audit.json").read_text())
    mistakes = audit_mistakes(after, artefact)
    reaudit = evidence["reaudit"]
    matched = reaudit.get("matched")
    picked = pick_strategy(after, mistakes)
    accuracy = evidence["accuracy"]
    return {"first_overlay": first_is_overlay(after, mistakes),
            "matched": None if matched is None else matched["id"],
            "mistakes": len(mistakes),
            "picked": None if picked is None else (int(picked["id"]),
                                                   overlay_share(picked, mistakes)),
            "grew": [(g["after"], g.get("size_before"), g["size_after"], g["new"])
                     for g in reaudit["grew"]],
            "strategies": len(after.get("strategies") or []),
            "accuracy": (accuracy.get("before"), accuracy.get("after")),
            "flip": (evidence["causal"]["before"].get("flip_rate"),
                     evidence["causal"]["after"].get("flip_rate"))}


# ----------------------------------------------------------------------------- output

def _pct(r: dict[str, Any]) -> str:
    return f"{r['rate']:.0%} ({r['k']}/{r['n']})" if r else "-"


def _ci(r: dict[str, Any]) -> str:
    return f"{r['rate']:.0%} [{r['ci'][0]:.0%}, {r['ci'][1]:.0%}]" if r else "-"


def row_line(row: Row) -> str:
    if row.error:
        return f"{row.kind} s{row.seed} {row.method}/{row.shape}/{row.layer}: {row.error}"
    r = row.reaudit
    return (f"{row.kind} s{row.seed} {row.method}/{row.shape}/{row.layer}: overlay changes "
            f"{_pct(row.before['changed'])} -> {_pct(row.after['changed'])}, clean agreement "
            f"{_pct(row.after['clean_agree'])}; re-audit: first is overlay "
            f"{'yes' if r['first_overlay'] else 'no'}, matched {r['matched']}, grew "
            f"{len(r['grew'])} ({row.seconds.get('correct', 0):.1f} s correct, "
            f"{row.seconds.get('evidence', 0):.0f} s evidence)")


def table(rows: Sequence[Row]) -> str:
    lines = ["| case | method / shape / layer | strategy: rank, overlay share, recall | "
             "contrast classes (members/others) | overlay changes, before -> after [95 %] "
             "| covered instead: before -> after | sure photos: before -> after "
             "| into strategy's class: before -> after | "
             "clean agreement after | re-audit: first is overlay, before -> after | "
             "re-audit: original found (id) | re-audit: grew (id: size before -> after) | "
             "audit-data accuracy before -> after | s: audit / correct / fresh / evidence |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name = f"{row.kind} s{row.seed}"
        how = f"{row.method} / {row.shape} / {row.layer}"
        if row.error:
            lines.append(f"| {name} | {how} | {row.error} |" + " - |" * 11)
            continue
        r, s = row.reaudit, row.seconds
        found = "no" if r["matched"] is None else f"yes ({r['matched']})"
        grew = ", ".join(f"{a}: {'new' if new else b} -> {size}" for a, b, size, new
                         in r["grew"]) or "none"
        lines.append(
            f"| {name} | {how} | {row.strategy}, {row.share:.0%}, {row.recall:.0%} of "
            f"{row.mistakes} | {row.classes} | {_ci(row.before['changed'])} -> "
            f"{_ci(row.after['changed'])} | {_pct(row.before['covered'])} -> "
            f"{_pct(row.after['covered'])} | {_pct(row.before['changed_sure'])} -> "
            f"{_pct(row.after['changed_sure'])} | {_pct(row.before['into_class'])} -> "
            f"{_pct(row.after['into_class'])} | {_pct(row.after['clean_agree'])} | "
            f"{'yes' if row.first_before else 'no'} -> {'yes' if r['first_overlay'] else 'no'}"
            f" | {found} | {grew} | "
            f"{r['accuracy'][0]:.3f} -> {r['accuracy'][1]:.3f} | {s['audit']:.0f} / "
            f"{s['correct']:.1f} / {s['fresh_before'] + s['fresh_after']:.0f} / "
            f"{s['evidence']:.0f} |")
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> list[str]:
    """Per method/shape/layer: in how many cases the overlay changes fewer fresh predictions
    (by any amount: read the table's intervals, 64 photos give +-12 points) or at most half as
    many, the re-audit no longer puts the overlay first, and the clean agreement."""
    out = []
    keys = sorted({(r.method, r.shape, r.layer) for r in rows if not r.error})
    for key in keys:
        part = [r for r in rows if (r.method, r.shape, r.layer) == key and not r.error]
        fewer = sum(r.after["changed"]["rate"] < r.before["changed"]["rate"] for r in part)
        halved = sum(r.after["changed"]["rate"] <= r.before["changed"]["rate"] / 2
                     for r in part)
        first = sum(not r.reaudit["first_overlay"] for r in part if r.first_before)
        was_first = sum(r.first_before for r in part)
        agree = [r.after["clean_agree"]["rate"] for r in part]
        out.append(f"- {' / '.join(key)}: the overlay changes fewer fresh predictions in "
                   f"{fewer} of {len(part)} cases (at most half as many in {halved}); the "
                   f"re-audit no longer puts the overlay first in {first} of the {was_first} "
                   f"cases where it was first; clean agreement {min(agree):.0%}-"
                   f"{max(agree):.0%}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(photos.KINDS),
                        help="comma-separated overlay kinds (default: all six)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--count", type=int, default=photos.COUNT, help="audited photos per case")
    parser.add_argument("--fresh", type=int, default=FRESH, help="fresh photos per case")
    parser.add_argument("--methods", default="pclarc", help="comma-separated correction methods")
    parser.add_argument("--shapes", default="map,channel", help="comma-separated: map, channel")
    parser.add_argument("--layers", default="audit",
                        help="comma-separated layers; 'audit' = the audit's layer")
    parser.add_argument("--position", default="fixed", choices=("fixed", "varying"))
    parser.add_argument("--out", type=Path, help="also write the output to this Markdown file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    def listed(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]

    try:
        seeds = [int(s) for s in listed(args.seeds)]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {args.seeds!r}")
    kinds = listed(args.kinds)
    unknown = sorted(set(kinds) - set(photos.KINDS))
    if unknown:
        parser.error(f"unknown overlay kind(s) {', '.join(unknown)}; known: "
                     f"{', '.join(photos.KINDS)}")
    shapes = listed(args.shapes)
    if set(shapes) - {"map", "channel"}:
        parser.error(f"--shapes takes map and/or channel, got {args.shapes!r}")
    import torch
    from _timing import ALLOCATOR_VARS, cpu_model

    import convlens as cl

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    classifier = cl.load_model(device="cpu")
    rows: list[Row] = []
    for seed in seeds:
        for kind in kinds:
            rows += run_case(kind, seed, classifier, count=args.count, fresh_count=args.fresh,
                             methods=listed(args.methods), shapes=shapes,
                             layers=listed(args.layers), position=args.position,
                             log=lambda text: print(text, flush=True))
    total = time.perf_counter() - started
    allocator = " ".join(f"{k}={os.environ[k]}" for k in ALLOCATOR_VARS if k in os.environ)
    command = ("python benchmarks/correction_photos.py "
               + " ".join(argv if argv is not None else sys.argv[1:]))
    text = "\n\n".join([
        "# P-ClArC on the real-model cases: overlays on photos, bundled EfficientNet-Lite0",
        f"`{command}`; {cpu_model()}, {os.cpu_count()} CPUs (shared), {torch.get_num_threads()} "
        f"torch threads, allocator: {allocator or 'glibc defaults'}; {total:.0f} s in all. "
        f"Audited: {args.count} photos per case (half overlaid, {args.position} position). "
        f"Fresh: {args.fresh} photos of the same recipe from another random stream, each seen "
        "clean and overlaid. overlay changes: the share of fresh photos whose prediction the "
        "overlay changes (each model against itself on the clean photo); sure photos: those the "
        f"original was >= {SURE:.0%} sure of; covered instead: the control, the "
        "overlay's region filled with the photo's mean colour instead (what hiding the content "
        "alone changes: no correction of a direction should remove that); into strategy's "
        "class: overlaid prediction is the "
        "strategy's class and the clean one is not; clean agreement: the corrected model's "
        "clean predictions equal to the original's (= clean accuracy). Re-audit "
        "(gather_evidence, the audited data): first is overlay = the first strategy is "
        f">= {MOSTLY:.0%} overlay-induced mistakes of the model audited; original found = the "
        "evidence's match (>= 50 % of the original members, and they >= 50 % of it).",
        "\n".join(summary(rows)), table(rows)])
    print("\n" + text)
    if args.out is not None:
        from convlens.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
