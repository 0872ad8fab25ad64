"""``FIXED/report.html``: written by ``convlens correct`` from the evidence it measured, offline,
with the numbers of correction.json on it (convlens 12)."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cli_support import run

from convlens.correction.report import CorrectionReportError, write_correction_report

planted_bias = pytest.importorskip("planted_bias")


class _Page(HTMLParser):
    """Every src/href and the text, as a browser would read them; fails on what it cannot."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag in ("section", "table", "ul", "figure"):
            self.open.append(tag)

    def handle_endtag(self, tag) -> None:
        if tag in ("section", "table", "ul", "figure"):
            assert self.open and self.open.pop() == tag, (tag, self.open)

    def handle_data(self, data) -> None:
        self.text.append(data)


def _read(page: Path) -> _Page:
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    parsed.close()
    assert not parsed.open, parsed.open
    parsed.words = " ".join(" ".join(parsed.text).split())
    return parsed


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("correct-report")
    planted, audit = planted_bias.audited_by_cli(root)
    out = root / "FIXED"
    done = run("correct", str(audit), "--strategy", "1", "--out", str(out), "--train",
               str(planted["data"]), *planted["model"])
    assert done.returncode == 0, done.stderr
    return out, done


def test_the_cli_writes_the_page_with_the_evidence_on_it(fixed) -> None:
    out, done = fixed
    page = out / "report.html"
    assert f"the page to decide on: {page}" in " ".join(done.stdout.split())
    evidence = json.loads((out / "correction.json").read_text())
    card = json.loads((out / "card.json").read_text())
    parsed = _read(page)
    words = parsed.words
    # 1. what was corrected, and how to load it
    assert f"--model {out}" in words
    assert card["source"]["weights_sha256"] in words and "pclarc" in words
    assert "circle (10 of the strategy, 20 others)" in words
    # 2. accuracy overall and per class (planted case: 81.0% -> 100.0%)
    accuracy = evidence["accuracy"]
    assert f"{_pct(accuracy['before'])} → {_pct(accuracy['after'])}" in words
    for name, row in accuracy["per_class"].items():
        assert f"{name} {row['images']} {_pct(row['before'])} {_pct(row['after'])}" in words
    # 3. the artefact test: every rate with its count and interval, before and after
    for row in evidence["artefact_test"]["table"]:
        for model in ("before", "after"):
            rate = row[model]["pasted_to_class"]
            assert (f"{_pct(rate['rate'])} ({rate['count']}/{rate['of']}) "
                    f"[{_pct(rate['ci'][0])}, {_pct(rate['ci'][1])}]") in words
    examples = evidence["artefact_test"]["examples"]
    assert len(examples) == 4 and all(e["before"]["pasted"] == "square" for e in examples)
    assert all(e["after"]["pasted"] == e["label"] for e in examples)  # the tag no longer works
    # 4. the re-audit and the causal flip rate; 5. the verdict; 6. guidance
    assert "The strategy is gone" in words
    assert "✔ the strategy's region pasted onto other classes makes the class 100.0% -> 0.0% " \
           "of the time (the 95% intervals do not overlap)" in words
    assert f"before {_pct(evidence['causal']['before']['flip_rate'])}" in words
    assert evidence["reaudit"]["whac_a_mole"]["verdict"] == "none"
    assert "No other strategy took the corrected one's place" in words
    assert f"{len(evidence['reaudit']['grew'])} strategy(ies) are new or bigger" in words
    assert "guidance.csv lists 70 images" in words
    # offline: every picture and link is a file in the folder
    assert parsed.links and not [u for u in parsed.links if ":" in u or u.startswith("/")]
    assert {"guidance.csv", "audit-after/report.html", "report-files/artefact-test.png",
            *(e["image"] for e in examples)} <= set(parsed.links)
    assert all((out / link).is_file() for link in parsed.links), parsed.links
    assert "http://" not in page.read_text() and "https://" not in page.read_text()


def test_the_page_marks_a_drop_a_mole_and_shows_what_later_methods_add(fixed, tmp_path) -> None:
    out, _ = fixed
    copy = tmp_path / "FIXED"
    shutil.copytree(out, copy)
    evidence = json.loads((copy / "correction.json").read_text())
    evidence["accuracy"]["per_class"]["square"]["after"] = 0.9  # 100.0% -> 90.0%
    evidence["reaudit"]["whac_a_mole"] = {
        "verdict": "grew", "rule": "a rule", "strategies": [
            {"after": 3, "size_after": 25, "grew_by": 10, "closest_before": 2,
             "why": ["suspicion rose 0.34 -> 0.45 (strategy 2 before)"]}]}
    (copy / "correction.json").write_text(json.dumps(evidence))
    card = json.loads((copy / "card.json").read_text())
    card["training"] = {"data": {"images": 50, "source": "the audit's labelled images"},
                        "settings": {"epochs": 3, "learning_rate": 0.001},
                        "history": [{"epoch": k, "alignment": a, "cross_entropy": 0.5,
                                     "accuracy": 0.9} for k, a in ((1, 0.2), (2, 0.1), (3, 0.01))],
                        "notes": ["resumed from the checkpoint after epoch 2"]}
    card["weights"] = {"file": "weights.safetensors", "keys": ["fc.bias", "fc.weight"],
                       "sha256": "ab" * 32}
    card["future"] = {"kind": 1}  # a key a later version adds: shown as it is
    (copy / "card.json").write_text(json.dumps(card))
    words = _read(write_correction_report(copy)).words
    assert "Fell by more than 1 point: square" in words
    assert "✘ accuracy fell by more than 1 point for square" in words
    assert "Another strategy grew in the corrected one's place" in words
    assert "3 25 +10 2 suspicion rose 0.34 -> 0.45 (strategy 2 before)" in words
    assert "trained on 50 images of the audit's labelled images" in words
    assert "settings epochs 3, learning_rate 0.001" in words
    assert "training 3 epochs: alignment with the direction 0.2 -> 0.01" in words
    assert "note resumed from the checkpoint after epoch 2" in words
    assert "trained tensors fc.bias, fc.weight in weights.safetensors" in words
    assert "✘ trained on the audit's own images" in words  # the evidence is in-sample
    assert 'future {"kind": 1}' in words


def test_a_folder_correct_did_not_write_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(CorrectionReportError, match="holds no card.json; give the folder "
                                                    "`convlens correct` wrote"):
        write_correction_report(tmp_path)
    (tmp_path / "card.json").write_text("{}")
    (tmp_path / "correction.json").write_text("[not json")
    with pytest.raises(CorrectionReportError, match="is not readable JSON"):
        write_correction_report(tmp_path)
