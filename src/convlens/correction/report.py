"""``FIXED/report.html``: the evidence of a correction as one page a team can decide on.

Rendered from what ``convlens correct`` wrote, never from the models: ``card.json`` (what
was corrected and how to load it), ``correction.json`` (:mod:`convlens.correction.evidence`:
accuracy, the artefact test, the re-audit, the whac-a-mole verdict, the causal flip rate)
and ``guidance.csv`` (:mod:`convlens.correction.guidance`). Like the audit's report
(:mod:`convlens.auditing.report`, whose look it shares: ``present/templates``) it opens from
the file system with no network: the figure is a file under ``FIXED/report-files/``, the
example images are the evidence's own ``FIXED/examples/``, and the page's
Content-Security-Policy allows nothing else. Keys that later methods add to the card
(``training``, ``weights``, ...) are shown as they are, so the page never needs to know
every method. See docs/architecture.md, "Correction".
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from itertools import zip_longest
from pathlib import Path
from typing import Any

from convlens.correction.training import AUDIT_IMAGES
from convlens.errors import CorrectionReportError
from convlens.files import write_text_atomic
from convlens.present.audit_figures import before_after_figure
from convlens.present.html import render_page

ASSETS = "report-files"
DROP = 0.01
"""A class whose accuracy falls by more than this (one point) is marked."""
GUIDANCE_ROWS = 10
"""Rows of guidance.csv shown on the page, shared among its sources (audit, training); the
file has them all."""
MEASURES = (("pasted_to_class", "pasted → class", "pasted images that become the class"),
            ("pasted_changed", "pasted changed", "pasted images whose prediction changes"),
            ("removed_changed", "removed changed", "members whose prediction changes when the "
                                                   "region is blurred out"))
_SHOWN = {"format", "convlens", "method", "strategy", "audit", "layer", "shape", "pooled",
          "direction_classes", "images", "source", "labels", "preprocessing", "output",
          "weights", "training", "projected"}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CorrectionReportError(
            f"{path.parent} holds no {path.name}; give the folder `convlens correct` wrote "
            "(--out), or run `convlens correct` again to write it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CorrectionReportError(f"{path} is not readable JSON ({error}); run `convlens "
                                    "correct ... --overwrite` to write it again") from None
    if not isinstance(data, dict):
        raise CorrectionReportError(f"{path} holds a {type(data).__name__}, not an object; run "
                                    "`convlens correct ... --overwrite` to write it again")
    return data


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _num(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _ci(rate: dict[str, Any] | None) -> str:
    band = (rate or {}).get("ci") or []
    return f"[{_pct(band[0])}, {_pct(band[1])}]" if len(band) == 2 else ""


def _plain(value: Any, limit: int = 300) -> str:
    """Any card value as one line of text (the page shows keys it does not know this way)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."


def _trained(card: dict[str, Any]) -> list[tuple[str, Any]]:
    """The training methods' rows: data, settings, what the training did, the new tensors."""
    rows: list[tuple[str, Any]] = [("projection inserted", "yes" if card.get("projected",
                                                                    card.get("format") == 1)
                                    else "no")]
    weights = card.get("weights") or {}
    if weights:
        rows.append(("trained tensors", f"{', '.join(weights.get('keys') or [])} in "
                     f"{weights.get('file')} (SHA-256 {str(weights.get('sha256'))[:16]}...)"))
    training = card.get("training") or {}
    if not training:
        return rows
    data = training.get("data") or {}
    rows.append(("trained on", f"{data.get('images')} images of {data.get('source')}"
                 + (f", {data['flagged']} flagged as the strategy's" if "flagged" in data
                    else "")))
    settings = training.get("settings") or {}
    rows.append(("settings", ", ".join(f"{k} {v}" for k, v in settings.items())))
    history = [h for h in training.get("history") or [] if isinstance(h, dict)]
    epochs = [h for h in history if "epoch" in h]
    if epochs:
        rows.append(("training", f"{len(epochs)} epochs: alignment with the direction "
                     f"{epochs[0].get('alignment')} -> {epochs[-1].get('alignment')}, "
                     f"cross-entropy {epochs[0].get('cross_entropy')} -> "
                     f"{epochs[-1].get('cross_entropy')}, training accuracy "
                     f"{_pct(epochs[-1].get('accuracy'))}"))
    chosen = next((h for h in history if "chosen_alpha" in h), None)
    if chosen is not None:
        tried = {h.get("alpha"): h for h in history if "alpha" in h}
        best = tried.get(chosen["chosen_alpha"]) or {}
        rows.append(("training", f"alpha {chosen['chosen_alpha']:g} of {len(tried)} tried "
                     f"(held-out worst-group accuracy {_pct(best.get('worst_group'))}, mean "
                     f"{_pct(best.get('mean_group'))})"))
    rows += [("note", note) for note in training.get("notes") or []]
    return rows


def _corrected(card: dict[str, Any], evidence: dict[str, Any], after: dict[str, Any],
               folder: Path) -> dict[str, Any]:
    """Section 1: the strategy, the method, the source, and how to load the folder."""
    strategy = evidence.get("strategy") or {}
    source = card.get("source") or {}
    classes = card.get("direction_classes") or {}
    method = [("method", card.get("method")), ("layer", card.get("layer")),
              ("shape", card.get("shape")),
              ("direction classes", ", ".join(
                  f"{k} ({v.get('members')} of the strategy, {v.get('others')} others)"
                  if isinstance(v, dict) else f"{k} ({_plain(v)})" for k, v in classes.items())
               or None),
              ("images", card.get("images"))]
    method += _trained(card)
    method += [(key, _plain(value)) for key, value in card.items() if key not in _SHOWN]
    origin = [("model", source.get("model")), ("weights", source.get("weights")),
              ("weights SHA-256", source.get("weights_sha256")),
              ("data", after.get("data")), ("seed", (evidence.get("artefact_test") or {})
                                            .get("seed", after.get("seed"))),
              ("audit", evidence.get("audit") or card.get("audit")),
              ("convlens", card.get("convlens")), ("card format", card.get("format"))]
    origin += [(key, _plain(value)) for key, value in source.items()
               if key not in {"model", "weights", "weights_sha256", "trust_model"}]
    return {"strategy": strategy, "groups": ", ".join(map(str, strategy.get("groups") or [])),
            "suspicion": _num(strategy.get("suspicion")),
            "error_rate": _pct(strategy.get("error_rate")),
            "method": [(k, v) for k, v in method if v not in (None, "")],
            "origin": [(k, v) for k, v in origin if v not in (None, "")],
            "load": f"--model {folder}", "folder": str(folder)}


def _accuracy(evidence: dict[str, Any]) -> dict[str, Any]:
    """Section 2: overall and per class, a drop of more than :data:`DROP` marked."""
    accuracy = evidence.get("accuracy") or {}
    overall = accuracy.get("overall") if isinstance(accuracy.get("overall"), dict) else accuracy

    def row(name: str, values: dict[str, Any], images: Any) -> dict[str, Any]:
        before, after = values.get("before"), values.get("after")
        change = after - before if isinstance(before, (int, float)) and \
            isinstance(after, (int, float)) else None
        return {"name": name, "images": images, "before": _pct(before), "after": _pct(after),
                "change": f"{100 * change:+.1f}" if change is not None else "-",
                "drop": change is not None and change < -DROP}

    rows = [row(str(name), values, values.get("images"))
            for name, values in (accuracy.get("per_class") or {}).items()
            if isinstance(values, dict)]
    return {"overall": row("all labelled images", overall, accuracy.get("images")),
            "rows": rows, "left_out": accuracy.get("left_out") or 0,
            "drops": [r["name"] for r in rows if r["drop"]]}


def _artefact(evidence: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Section 3: per region size and measure, before and after with intervals; the figure."""
    test = evidence.get("artefact_test") or {}
    rows, bars = [], []
    for entry in test.get("table") or []:
        size = entry.get("size")
        for key, caption, what in MEASURES:
            before = (entry.get("before") or {}).get(key) or {}
            after = (entry.get("after") or {}).get(key) or {}
            rows.append({"size": f"1/{round(1 / size)}" if size else "-", "caption": caption,
                         "what": what, "before": _pct(before.get("rate")),
                         "before_ci": _ci(before), "after": _pct(after.get("rate")),
                         "after_ci": _ci(after), "before_n": f"{before.get('count', '-')}/"
                         f"{before.get('of', '-')}", "after_n": f"{after.get('count', '-')}/"
                         f"{after.get('of', '-')}"})
            if isinstance(before.get("rate"), (int, float)) and \
                    isinstance(after.get("rate"), (int, float)):
                bars.append((f"{rows[-1]['size']}\n{caption.replace('→', '->')}",
                             before["rate"], before.get("ci") or [before["rate"]] * 2,
                             after["rate"], after.get("ci") or [after["rate"]] * 2))
    figure = None
    if bars:
        before_after_figure(bars, folder / ASSETS / "artefact-test.png",
                            title=f"the strategy's region, pasted and removed "
                                  f"(class {test.get('class', '?')})")
        figure = f"{ASSETS}/artefact-test.png"
    examples = [e for e in test.get("examples") or []
                if isinstance(e, dict) and (folder / str(e.get("image", ""))).is_file()]
    return {"test": test, "rows": rows, "figure": figure, "examples": examples}


def _reaudit(evidence: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Section 4: is the strategy still found, every strategy before and after, the flip
    rate; section 5: the whac-a-mole verdict."""
    reaudit = evidence.get("reaudit") or {}

    def summary(s: dict[str, Any] | None) -> dict[str, Any] | None:
        if not s:
            return None
        return {"id": s.get("id"), "kind": s.get("kind"),
                "groups": ", ".join(map(str, s.get("groups") or [])), "size": s.get("size"),
                "suspicion": _num(s.get("suspicion")), "error_rate": _pct(s.get("error_rate")),
                "flip_rate": _pct(s.get("flip_rate"))}

    pairs = list(zip_longest([summary(s) for s in reaudit.get("strategies_before") or []],
                             [summary(s) for s in reaudit.get("strategies_after") or []]))
    report = reaudit.get("report") or f"{reaudit.get('folder', 'audit-after')}/report.html"
    causal = evidence.get("causal") or {}
    mole = reaudit.get("whac_a_mole") or {}
    return {"reaudit": reaudit, "pairs": pairs,
            "closest": summary(reaudit.get("matched") or reaudit.get("closest")),
            "holds": _pct((reaudit.get("matched") or reaudit.get("closest") or {})
                          .get("holds_original")),
            "report": report if (folder / report).is_file() else None,
            "flip_before": _pct((causal.get("before") or {}).get("flip_rate")),
            "flip_before_source": (causal.get("before") or {}).get("source"),
            "flip_after": _pct((causal.get("after") or {}).get("flip_rate")),
            "flip_after_note": (causal.get("after") or {}).get("note")
            or (causal.get("after") or {}).get("source"),
            "mole": mole, "raw_grew": len(reaudit.get("grew") or [])}


def _guidance(folder: Path) -> dict[str, Any] | None:
    """Section 6: how many images to relabel, remove or augment, and the first rows."""
    path = folder / "guidance.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kinds: Counter = Counter()
    for r in rows:
        if r.get("source") != "audit":
            kinds[f"{r.get('source') or 'other'} images furthest along the strategy's "
                  "direction: check them for the artefact"] += 1
        elif (r.get("action") or "").startswith("relabel"):
            kinds["mistakes of the strategy: relabel, or augment without the artefact"] += 1
        else:
            kinds["correct predictions on the same evidence: augment, or remove the "
                  "artefact"] += 1
    shown: list[dict[str, Any]] = []
    sources = list(dict.fromkeys(r.get("source") for r in rows))
    for source in sources:  # each source's first rows
        shown += [r for r in rows if r.get("source") == source][
            :max(1, GUIDANCE_ROWS // len(sources))]
    return {"count": len(rows), "kinds": sorted(kinds.items(), key=lambda kv: -kv[1]),
            "rows": shown, "more": max(0, len(rows) - len(shown))}

def _verdicts(accuracy: dict[str, Any], artefact: dict[str, Any], reaudit: dict[str, Any],
              card: dict[str, Any] | None = None) -> list[tuple[bool | None, str]]:
    """The page's first lines: each check with whether it speaks for shipping (``None``:
    unknown). The pasted region counts as defused when the after interval lies wholly below
    the before interval (larger region, pasted -> class)."""
    said: list[tuple[bool | None, str]] = []
    data = ((card or {}).get("training") or {}).get("data") or {}
    if data.get("source") == AUDIT_IMAGES:
        said.append((False, "trained on the audit's own images: every number below is "
                     "measured on images the correction learned from; correct again with "
                     "--data (the training folder) to keep them apart"))
    overall = accuracy["overall"]
    said.append((not overall["drop"] if overall["change"] != "-" else None,
                 f"accuracy {overall['before']} -> {overall['after']} ({overall['change']} "
                 "points)"))
    if accuracy["drops"]:
        said.append((False, "accuracy fell by more than 1 point for " +
                     ", ".join(accuracy["drops"])))
    table = (artefact["test"].get("table") or [])
    if table:
        last = table[-1]
        now = (last.get("after") or {}).get("pasted_to_class") or {}
        then = (last.get("before") or {}).get("pasted_to_class") or {}
        if isinstance(now.get("rate"), (int, float)) and isinstance(then.get("rate"),
                                                                    (int, float)):
            apart = len(now.get("ci") or []) == 2 and len(then.get("ci") or []) == 2 \
                and now["ci"][1] < then["ci"][0]
            said.append((apart, f"the strategy's region pasted onto other classes makes the "
                         f"class {_pct(then['rate'])} -> {_pct(now['rate'])} of the time "
                         + ("(the 95% intervals do not overlap)" if apart else
                            "(not clearly less: the 95% intervals overlap)")))
    still = reaudit["reaudit"].get("still_exists")
    if still is not None:
        said.append((not still, "the strategy is " + ("still found" if still else "gone")
                     + " in the re-audit"))
    verdict = reaudit["mole"].get("verdict")
    if verdict:
        said.append((verdict == "none", "whac-a-mole: " + (
            "no other strategy took its place" if verdict == "none" else
            f"{len(reaudit['mole'].get('strategies') or [])} strategy(ies) grew in its place")))
    return said


def write_correction_report(folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/report.html`` from what ``convlens correct`` wrote into ``folder``.

    Args:
        folder: The corrected model's folder (``card.json``, ``correction.json``, optionally
            ``guidance.csv``, ``examples/`` and ``audit-after/``).

    Returns:
        The page's path.

    Raises:
        CorrectionReportError: ``folder`` lacks ``card.json`` or ``correction.json``, or one
            is not a JSON object.

    Example:
        >>> write_correction_report("fixed")  # doctest: +SKIP
        PosixPath('fixed/report.html')
    """
    folder = Path(os.fspath(folder))
    card = _read_json(folder / "card.json")
    evidence = _read_json(folder / "correction.json")
    reaudit_folder = (evidence.get("reaudit") or {}).get("folder") or "audit-after"
    try:
        after = json.loads((folder / reaudit_folder / "audit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        after = {}  # only for the data folder and the seed: the page does without
    (folder / ASSETS).mkdir(parents=True, exist_ok=True)
    accuracy = _accuracy(evidence)
    artefact = _artefact(evidence, folder)
    reaudit = _reaudit(evidence, folder)
    html = render_page("correction.html.j2", {
        "corrected": _corrected(card, evidence, after if isinstance(after, dict) else {},
                                folder),
        "models": evidence.get("models") or {}, "accuracy": accuracy, "artefact": artefact,
        "re": reaudit, "guidance": _guidance(folder),
        "verdicts": _verdicts(accuracy, artefact, reaudit, card),
    })
    return write_text_atomic(folder / "report.html", html)
