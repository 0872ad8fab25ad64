"""The evidence of a correction (convlens 12, item 3): measured, none assumed.

:func:`gather_evidence` compares the original and the corrected classifier on the audit's own
images and writes ``correction.json`` (see docs/architecture.md, "Correction"):

* ``accuracy``: before/after, overall and per labelled class (images without a label, or
  whose label the model does not know, are not counted).
* ``artefact_test``: the strategy's hot region (its mean map's hottest pixels covering
  1/16 and 1/8 of the image, :func:`convlens.auditing.causal.cluster_regions`) *pasted*
  from each member onto images that are not members, of a labelled class other than the
  strategy's class (the class most members are predicted as), paired by a seeded
  generator (also reported per destination class); and *removed* from each member
  (covered by the audit's blur of the surroundings, :func:`convlens.auditing.causal.cover`,
  the causal check's infill).
  For each model: the share of predictions that change, and the share of pasted images
  that become the strategy's class. Each model is compared with itself on the unmodified
  image, so a change is the region's doing.
  ``examples``: the first :data:`EXAMPLES` pasted images (larger region, one per member) as
  PNGs in ``out/examples/``, with each model's prediction on the image and on it pasted.
* ``reaudit``: ``cl.audit`` of the corrected model on the same data with the original
  audit's method, layer, grouping and seed (``out/audit-after``); the strategy that still
  holds >= 50 % of the original members (if any), and every strategy before/after with its
  size. ``grew`` lists every strategy that is new or bigger (raw: a re-clustering of the same
  images fills it); ``whac_a_mole`` is the verdict: ``"grew"`` only when a strategy (not the
  corrected one) grew by at least max(5 images, 25 %) over its match before (corrected
  members it took in not counted; a new strategy from 0) *and* its suspicion or error rate
  is at least the corrected strategy's before, or rose by >= 0.10 over the strategy before
  holding most of its images; else ``"none"`` (:func:`whac_a_mole`, its ``rule`` in words).
* ``causal``: the strategy's causal flip rate before (audit.json) and after (the matched
  strategy's in the re-audit), each measured here with the same check when its audit did
  not check the strategy (below the top ``checks``), or "no matching strategy after
  correction".
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens._hooks import evaluation_mode
from convlens.auditing.causal import _r, causal_check, cluster_regions, cover, wilson
from convlens.auditing.run import audit as run_audit
from convlens.correction.audits import audit_data, strategy_entry
from convlens.correction.direction import DirectionError
from convlens.files import ensure_folder, write_bytes_atomic, write_json_atomic
from convlens.models.classifier import Classifier, as_classifier

SIZES = (1 / 16, 1 / 8)
"""Areas of the hot region the artefact test pastes and removes (fractions of the image)."""
EXAMPLES = 4
"""Pasted images (the larger region, distinct members) kept as PNGs under ``out/examples/``
with both models' predictions, for the report to show."""
MATCH = 0.5
"""A strategy after correction matches when it holds at least this share of the original
members and they are at least this share of its own."""
NO_MATCH = "no matching strategy after correction"


def _base(data: dict[str, Any]) -> Path:
    root = Path(data.get("data") or ".")
    return root if root.is_dir() else root.parent


def _decode(classifier: Classifier, base: Path, paths: Sequence[str]) -> torch.Tensor:
    return classifier.preprocess([str(base / p) for p in paths])


@torch.no_grad()
def _predict(classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
    with evaluation_mode(classifier.module):
        return classifier.module(x.to(classifier.device)).argmax(1).cpu()


def _rate(count: int, total: int) -> dict[str, Any]:
    low, high = wilson(count, total)
    return {"count": count, "of": total, "rate": _r(count / total if total else 0.0),
            "ci": [_r(low), _r(high)]}


def _accuracy(models: dict[str, Any], base: Path, rows: Sequence[dict[str, Any]],
              labels: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Accuracy of each model overall and per labelled class, on ``rows``."""
    index = {name: k for k, name in enumerate(labels)}
    known = [r for r in rows if r.get("label") is not None and str(r["label"]) in index]
    right = {m: Counter() for m in models}
    seen: Counter = Counter()
    for start in range(0, len(known), batch_size):
        part = known[start:start + batch_size]
        x = _decode(next(iter(models.values())), base, [r["path"] for r in part])
        truth = torch.tensor([index[str(r["label"])] for r in part])
        seen.update(str(r["label"]) for r in part)
        for name, model in models.items():
            hit = (_predict(model, x) == truth).tolist()
            right[name].update(str(r["label"]) for r, ok in zip(part, hit) if ok)
    total = sum(seen.values())
    out: dict[str, Any] = {"images": total, "left_out": len(rows) - total}
    for name in models:
        out[name] = _r(sum(right[name].values()) / total) if total else None
    out["per_class"] = {c: {"images": n, **{m: _r(right[m][c] / n) for m in models}}
                        for c, n in sorted(seen.items())}
    return out


def _pairs(rows: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]], target: str,
           seed: int, per_member: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each member paired with ``per_member`` labelled non-members (drawn with replacement)
    of a class other than ``target``, the strategy's class: a change to ``target`` is then a
    mistake the region made. The member's own class is allowed: on the planted net of seed 2
    the tag made circles squares but not triangles, and a test that paired the tagged circles
    with triangles only saw no effect (0/40) where there was one."""
    inside = {m["path"] for m in members}
    pool = [r for r in rows if r["path"] not in inside and r.get("label") is not None
            and str(r["label"]) != target]
    generator = torch.Generator().manual_seed(int(seed))
    pairs = []
    for member in members if pool else []:
        for _ in range(per_member):
            pairs.append((member, pool[int(torch.randint(len(pool), (1,),
                                                         generator=generator))]))
    return pairs


def _label(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def _save_example(classifier: Classifier, x: torch.Tensor, path: Path) -> None:
    """One preprocessed image as a PNG (back in pixel units)."""
    from PIL import Image

    pixels = classifier.preprocessing.unnormalize(x[None].float())[0].clamp(0, 1)
    image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def _artefact_test(models: dict[str, Any], base: Path, rows: Sequence[dict[str, Any]],
                   entry: dict[str, Any], target: str, *, seed: int, per_member: int,
                   batch_size: int, examples: Path | None = None) -> dict[str, Any]:
    """Paste the hot region onto other classes' images, remove it from the members; keep
    :data:`EXAMPLES` pasted images under ``examples`` (when given)."""
    first = next(iter(models.values()))
    size = tuple(first.preprocessing.input_size)
    regions = cluster_regions(np.asarray(entry["mean_map"], dtype=np.float64), size, SIZES)
    by_path = {r["path"]: r for r in rows}
    members = [by_path[p] for p in entry.get("members") or [] if p in by_path]
    pairs = _pairs(rows, members, target, seed, per_member)
    target_index = first.labels.index(target) if first.labels and target in first.labels else -1
    counts = {m: {k: Counter() for k in range(len(SIZES))} for m in models}
    names = list(first.labels or [])
    kept: dict[int, dict[str, Any]] = {
        i: {"image": f"examples/pasted-{n + 1}.png", "size": _r(SIZES[-1]),
            "member": pairs[i][0]["path"], "onto": pairs[i][1]["path"],
            "label": str(pairs[i][1]["label"])}
        for n, i in enumerate(range(0, len(pairs), max(1, per_member)))
        if examples is not None and n < EXAMPLES}
    for start in range(0, len(pairs), batch_size):
        part = pairs[start:start + batch_size]
        source = _decode(first, base, [a["path"] for a, _ in part])
        dest = _decode(first, base, [b["path"] for _, b in part])
        for name, model in models.items():
            plain = _predict(model, dest)
            for k, hot in enumerate(regions.hot):
                mask = hot.to(dest.dtype)
                mixed = dest * (1 - mask) + source * mask
                pasted = _predict(model, mixed)
                for i in kept if k == len(SIZES) - 1 else ():
                    if start <= i < start + len(part):
                        kept[i][name] = {"plain": _label(names, int(plain[i - start])),
                                         "pasted": _label(names, int(pasted[i - start]))}
                        if model is first:  # the same picture for both models
                            _save_example(first, mixed[i - start],
                                          Path(examples or ".") / Path(kept[i]["image"]).name)
                counts[name][k]["pasted_changed"] += int((pasted != plain).sum())
                made = ((pasted == target_index) & (plain != target_index)).tolist()
                counts[name][k]["pasted_to_class"] += sum(made)
                for (_, other), hit in zip(part, made):
                    counts[name][k][("onto", str(other["label"]))] += 1
                    counts[name][k][("made", str(other["label"]))] += int(hit)
    for start in range(0, len(members), batch_size):
        part = members[start:start + batch_size]
        x = _decode(first, base, [m["path"] for m in part])
        for name, model in models.items():
            plain = _predict(model, x)
            for k, hot in enumerate(regions.hot):
                covered = _predict(model, cover(x, hot.expand(len(x), *hot.shape), "blur"))
                counts[name][k]["removed_changed"] += int((covered != plain).sum())
    table = []
    for k, area in enumerate(regions.areas):
        row: dict[str, Any] = {"size": _r(SIZES[k]), "area": _r(area),
                               "relevance_share": _r(regions.shares[k])}
        for name in models:
            c = counts[name][k]
            row[name] = {"pasted_changed": _rate(c["pasted_changed"], len(pairs)),
                         "pasted_to_class": _rate(c["pasted_to_class"], len(pairs)),
                         "removed_changed": _rate(c["removed_changed"], len(members)),
                         "pasted_to_class_by_class": {
                             label: _rate(c[("made", label)], c[("onto", label)])
                             for label in sorted({key[1] for key in c if isinstance(key, tuple)
                                                  and key[0] == "onto"})}}
        table.append(row)
    return {"class": target, "pairs": len(pairs), "members": len(members),
            "infill": "blur", "seed": int(seed), "table": table,
            "examples": [kept[i] for i in sorted(kept)]}


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"id": entry.get("id"), "kind": entry.get("kind"), "groups": entry.get("groups"),
            "size": entry.get("size"), "suspicion": entry.get("suspicion"),
            "error_rate": entry.get("error_rate"), "flip_rate": entry.get("flip_rate")}


def _share(a: set[str], b: set[str]) -> float:
    """The share of ``a`` that is in ``b``."""
    return len(a & b) / len(a) if a else 0.0


GROWTH = (5, 0.25)
"""A strategy *grew* (whac-a-mole) only when it holds at least this many more images, and at
least this share more, than its closest strategy before (not counting corrected members)."""
RISE = 0.10
"""... and is as suspicious as the corrected strategy was, or its suspicion or error rate rose
by at least this much over its closest strategy before."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def whac_a_mole(rows: Sequence[tuple[dict[str, Any], float, dict[str, Any] | None, int]],
                entry: dict[str, Any], matched: int | None = None) -> dict[str, Any]:
    """The whac-a-mole verdict of a re-audit: did another strategy take the corrected one's
    place? Re-clustering alone reshuffles sizes, so a strategy counts only when it grew by a
    margin *and* looks like a shortcut (the rule is :data:`GROWTH` and :data:`RISE`, spelled
    out in the result's ``rule``).

    Args:
        rows: Per strategy after correction, ``(row, share, closest, held)``: its row as in
            ``grew`` (``after``, ``size_after``, ``suspicion_after``, ``error_rate_after``),
            the share of its members in ``closest``, the strategy before holding most of its
            members (``None`` when none holds any), and how many of the corrected strategy's
            members it holds (not counted as growth: they had to go somewhere).
        entry: The corrected strategy before (its ``suspicion`` and ``error_rate`` set the
            bar).
        matched: The id after of the corrected strategy itself, if it still exists (it is
            reported as ``still_exists``, not as a new mole).

    Returns:
        ``{"verdict": "none" | "grew", "strategies": [...], "rule": "..."}``; each listed
        strategy says which parts of the rule it met (``why``).

    Example:
        >>> row = {"after": 3, "size_after": 30, "suspicion_after": 0.7, "error_rate_after": 0.6}
        >>> whac_a_mole([(row, 0.0, None, 0)], {"suspicion": 0.68, "error_rate": 0.95})["verdict"]
        'grew'
    """
    least, share = GROWTH
    bar_suspicion, bar_error = _number(entry.get("suspicion")), _number(entry.get("error_rate"))
    found = []
    for row, overlap, closest, held in rows:
        if matched is not None and row.get("after") == matched:
            continue
        known = closest is not None and overlap > 0
        size_before = int((closest or {}).get("size") or 0) if overlap >= MATCH else 0
        size = int(row.get("size_after") or 0) - held
        needed = max(least, share * size_before)
        if size - size_before < needed:
            continue
        suspicion, error = _number(row.get("suspicion_after")), _number(row.get("error_rate_after"))
        why = []
        if suspicion is not None and bar_suspicion is not None and suspicion >= bar_suspicion:
            why.append(f"suspicion {suspicion:.2f} >= the corrected strategy's {bar_suspicion:.2f}")
        if error is not None and bar_error is not None and error >= bar_error:
            why.append(f"error rate {error:.2f} >= the corrected strategy's {bar_error:.2f}")
        for name, now in (("suspicion", suspicion), ("error rate", error)):
            then = _number((closest or {}).get(name.replace(" ", "_"))) if known else None
            if now is not None and then is not None and now - then >= RISE:
                why.append(f"{name} rose {then:.2f} -> {now:.2f} (strategy {closest.get('id')} "
                           "before)")
        if why:
            found.append({**row, "closest_before": closest.get("id") if known else None,
                          "size_before": size_before, "grew_by": size - size_before,
                          "why": why})
    rule = (f"a strategy after correction (other than the corrected one, if it is still "
            f"found) grew when, not counting the corrected strategy's members it took in, it "
            f"holds at least max({least} images, {share:.0%}) more than the strategy before "
            f"that holds >= {MATCH:.0%} of its members (0 when none: a new strategy), and its "
            "suspicion or error rate is at least the corrected strategy's before, or rose by "
            f">= {RISE:.2f} over the strategy before that holds most of its members")
    return {"verdict": "grew" if found else "none", "strategies": found, "rule": rule}


def _reaudit(before: dict[str, Any], after: dict[str, Any], entry: dict[str, Any]
             ) -> dict[str, Any]:
    """The original strategy's match after correction, and every strategy's size.

    A strategy after correction *matches* when it holds >= :data:`MATCH` of the original
    members and they are >= :data:`MATCH` of its own members (a class cluster that merely
    took the corrected images back is not the strategy). ``grew`` is the raw list: every
    strategy that is new (no strategy before holds half its members) or holds more images than
    its best match before, not counting the original members it took in; any re-clustering
    fills it. ``whac_a_mole`` is the verdict (:func:`whac_a_mole`).
    """
    members = set(entry.get("members") or [])
    later = list(after.get("strategies") or [])
    earlier = list(before.get("strategies") or [])
    scored = [(min(_share(members, set(s.get("members") or [])),
                   _share(set(s.get("members") or []), members)), s) for s in later]
    best = max(scored, key=lambda t: t[0], default=(0.0, None))
    closest = None
    if best[1] is not None:
        inside = set(best[1].get("members") or [])
        closest = {**_summary(best[1]), "holds_original": _r(_share(members, inside)),
                   "original_share": _r(_share(inside, members))}
    grew, rows = [], []
    for strategy in later:
        inside = set(strategy.get("members") or [])
        share, match = max(((_share(inside, set(s.get("members") or [])), s) for s in earlier),
                           key=lambda t: t[0], default=(0.0, None))
        taken = len(inside & members) if match is None or match.get("id") != entry.get("id") \
            else 0
        row = {"after": strategy.get("id"), "size_after": strategy.get("size"),
               "suspicion_after": strategy.get("suspicion"),
               "error_rate_after": strategy.get("error_rate"), "from_corrected": taken}
        rows.append((row, share, match, len(inside & members)))
        if match is None or share < MATCH:
            grew.append({**row, "before": None, "new": True})
        elif (strategy.get("size") or 0) - taken > (match.get("size") or 0):
            grew.append({**row, "before": match.get("id"), "size_before": match.get("size"),
                         "suspicion_before": match.get("suspicion"), "new": False})
    still = best[1] is not None and best[0] >= MATCH
    return {"still_exists": still, "matched": closest if still else None, "closest": closest,
            "match_rule": f"holds >= {MATCH:.0%} of the original members, and they are "
                          f">= {MATCH:.0%} of its own",
            "strategies_before": [_summary(s) for s in earlier],
            "strategies_after": [_summary(s) for s in later],
            "grew": grew,
            "whac_a_mole": whac_a_mole(rows, entry, closest["id"] if still and closest
                                       else None)}


def _flip(classifier: Classifier, base: Path, entry: dict[str, Any], seed: int, batch_size: int,
          source: str) -> dict[str, Any]:
    """A strategy's causal flip rate: the audit's, else measured here with the same check
    (hot region of its mean map, blur infill) on its members."""
    if entry.get("flip_rate") is not None:
        return {"flip_rate": entry["flip_rate"],
                "random_flip_rate": entry.get("random_flip_rate"), "source": source}
    paths = list(entry.get("members") or [])
    x = torch.cat([_decode(classifier, base, paths[s:s + batch_size])
                   for s in range(0, len(paths), batch_size)])
    check = causal_check(classifier, x, np.asarray(entry["mean_map"], dtype=np.float64),
                         keys=paths, seed=seed, batch_size=batch_size)
    return {"flip_rate": _r(check.flip_rate), "random_flip_rate": _r(check.random_flip_rate),
            "source": f"measured here (the {source} did not check this strategy)"}


def gather_evidence(original: Any, corrected: Any, audit: Any, strategy: int, *,
                    out: str | os.PathLike[str], seed: int = 0, per_member: int = 2,
                    batch_size: int = 64, reaudit_options: dict[str, Any] | None = None,
                    report: bool = False) -> dict[str, Any]:
    """Measure what a correction did and write ``out/correction.json``; see the module doc.

    Args:
        original: The audited classifier. ``corrected``: its correction
            (``correct(...).classifier``); both Classifiers or ``nn.Module``s.
        audit: ``cl.audit``'s result or the folder it wrote (its images are read again).
        strategy: The corrected strategy's id.
        out: Output folder: ``correction.json`` and the re-audit in ``audit-after/``.
        seed: Seeds the artefact test's pairs and the re-audit.
        per_member: Non-members each member's region is pasted onto.
        reaudit_options: Extra keyword arguments for the re-audit's ``cl.audit``.
        report: Also write the re-audit's HTML report (``out/audit-after/report.html``).

    Returns:
        The JSON-ready dict written to ``correction.json``.

    Example:
        >>> fixed = correct(clf, audit, 1)                                   # doctest: +SKIP
        >>> ev = gather_evidence(clf, fixed.classifier, audit, 1, out="fixed")  # doctest: +SKIP
        >>> ev["artefact_test"]["table"][0]["after"]["pasted_to_class"]["rate"]  # doctest: +SKIP
    """
    original, corrected = as_classifier(original), as_classifier(corrected)
    data, folder = audit_data(audit)
    entry = strategy_entry(data, strategy)
    if not entry.get("mean_map") or not entry.get("members"):
        raise DirectionError(f"strategy {strategy} of the audit has no mean map or no members "
                             "to test; re-run `convlens audit` with this version and correct "
                             "from its folder")
    out = ensure_folder(out, writable=True)
    base = _base(data)
    rows = list(data.get("images") or [])
    models = {"before": original, "after": corrected}
    by_path = {r["path"]: r for r in rows}
    predicted = Counter(str(by_path[p].get("predicted")) for p in entry.get("members") or []
                        if p in by_path)
    target = predicted.most_common(1)[0][0] if predicted else ""  # ties: members' order
    labels = list(original.labels or [])

    accuracy = _accuracy(models, base, rows, labels, batch_size)
    artefact = _artefact_test(models, base, rows, entry, target, seed=seed,
                              per_member=per_member, batch_size=batch_size,
                              examples=ensure_folder(out / "examples", writable=True))
    options = {"method": data.get("method", "gradcam"), "layer": data.get("layer"),
               "group_by": data.get("group_by", "predicted"),
               "map_size": data.get("map_size", 32), "layout": data.get("layout", "auto"),
               "overwrite": True, **(reaudit_options or {})}
    reaudited = run_audit(corrected, data["data"], out=out / "audit-after", seed=seed,
                          **options)
    after = reaudited.data
    reaudit = _reaudit(data, after, entry)
    reaudit["folder"] = "audit-after"
    if report:
        reaudited.report()
        reaudit["report"] = "audit-after/report.html"
    evidence = {
        "strategy": {**_summary(entry), "class": target,
                     "members_predicted": dict(predicted.most_common())},
        "audit": str(folder),
        "models": {"before": original.name, "after": corrected.name},
        "accuracy": accuracy,
        "artefact_test": artefact,
        "reaudit": reaudit,
        "causal": {"before": _flip(original, base, entry, seed, batch_size, "audit"),
                   "after": (_flip(corrected, base, strategy_entry(after, reaudit["matched"]["id"]),
                                   seed, batch_size, "re-audit") if reaudit["matched"]
                             else {"flip_rate": None, "note": NO_MATCH})},
    }
    write_json_atomic(out / "correction.json", evidence)
    return evidence
