"""The evidence of a correction on the planted tag => square net (convlens 12, item 3)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

planted_bias = pytest.importorskip("planted_bias")

import convlens as cl  # noqa: E402
import convlens.files  # noqa: E402
from convlens.correction.evidence import NO_MATCH, gather_evidence  # noqa: E402
from convlens.correction.run import correct  # noqa: E402
from convlens.errors import ConvlensError  # noqa: E402


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    planted = planted_bias.write_planted_folder(root, planted_bias.planted_case(0))
    clf = planted_bias.planted_classifier(planted)
    audit = cl.audit(clf, planted["data"], out=root / "audit", seed=0)
    fixed = correct(clf, audit, 1)
    evidence = gather_evidence(clf, fixed.classifier, audit, 1, out=root / "fixed")
    return clf, fixed, audit, evidence, root / "fixed"


def _rates(evidence, size=0):
    row = evidence["artefact_test"]["table"][size]
    return {model: {k: v["rate"] for k, v in row[model].items() if "rate" in v}
            for model in ("before", "after")}


def test_the_pasted_tag_no_longer_makes_squares_after_pclarc(corrected) -> None:
    _clf, _fixed, _audit, evidence, _out = corrected
    test = evidence["artefact_test"]
    assert test["class"] == "square" and test["members"] == 40 and test["pairs"] == 80
    for size in (0, 1):  # 1/16 and 1/8 of the image
        rates = _rates(evidence, size)
        # measured (seed 0): pasted onto circles/triangles 1.00 -> 0.00 become squares;
        # removed from the members 0.95 -> 0.00 change
        assert rates["before"]["pasted_to_class"] >= 0.9
        assert rates["after"]["pasted_to_class"] <= 0.1
        assert rates["before"]["removed_changed"] >= 0.8
        assert rates["after"]["removed_changed"] <= 0.1
        assert rates["after"]["pasted_changed"] <= 0.1
        by_class = test["table"][size]["before"]["pasted_to_class_by_class"]
        assert set(by_class) == {"circle", "triangle"}  # never onto the strategy's class
        assert sum(c["of"] for c in by_class.values()) == 80


def test_accuracy_before_and_after_overall_and_per_class(corrected) -> None:
    accuracy = corrected[3]["accuracy"]
    assert accuracy["images"] == 200 and accuracy["left_out"] == 0
    assert set(accuracy["per_class"]) == {"circle", "square", "triangle"}
    per = accuracy["per_class"]
    # the tagged circles and triangles were called squares; after, they are not
    assert per["circle"]["before"] < 0.8 and per["circle"]["after"] >= 0.95
    assert per["triangle"]["before"] < 0.8 and per["triangle"]["after"] >= 0.95
    assert per["square"]["after"] >= per["square"]["before"] - 0.02
    assert accuracy["after"] > accuracy["before"]


def test_the_reaudit_no_longer_finds_the_tag_strategy(corrected) -> None:
    _clf, _fixed, _audit, evidence, out = corrected
    reaudit = evidence["reaudit"]
    assert (out / "audit-after" / "audit.json").is_file()
    # measured (seed 0): the tagged images went back to their classes' clusters; the closest
    # strategy (the triangle cluster) holds half the members, but they are a third of it
    assert reaudit["still_exists"] is False and reaudit["matched"] is None
    assert reaudit["closest"]["original_share"] < 0.5
    assert reaudit["strategies_before"][0]["id"] == 1
    assert all(s["error_rate"] < 0.5 for s in reaudit["strategies_after"])
    causal = evidence["causal"]
    assert causal["before"]["flip_rate"] == 0.95
    assert causal["after"] == {"flip_rate": None, "note": NO_MATCH}


def test_correction_json_is_what_was_returned(corrected) -> None:
    evidence, out = corrected[3], corrected[4]
    assert json.loads((out / "correction.json").read_text(encoding="utf-8")) == evidence


@pytest.mark.parametrize("checks, source", [(3, "re-audit"), (0, "measured here")])
def test_an_uncorrected_model_keeps_its_strategy_and_its_flip_rate(
        corrected, tmp_path, snapshot, checks, source) -> None:
    clf, _fixed, audit, _evidence, _out = corrected
    watch = snapshot(clf.module)
    same = gather_evidence(clf, clf, audit, 1, out=tmp_path,
                           reaudit_options={"checks": checks})
    watch.assert_unchanged()
    assert same["reaudit"]["still_exists"] is True
    assert same["reaudit"]["matched"]["holds_original"] == 1.0
    # with checks=0 the re-audit checks nothing and the flip rate is measured here
    assert same["causal"]["after"]["source"].startswith(source)
    assert same["causal"]["after"]["flip_rate"] == same["causal"]["before"]["flip_rate"]
    rates = _rates(same)
    assert rates["after"] == rates["before"]
    assert same["accuracy"]["after"] == same["accuracy"]["before"]


def test_a_failed_write_leaves_the_previous_correction_json(corrected, tmp_path,
                                                            monkeypatch) -> None:
    clf, fixed, audit, _evidence, _out = corrected
    (tmp_path / "correction.json").write_text('{"old": true}', encoding="utf-8")
    replace = os.replace

    def full_disk(source, target, *args, **kwargs):
        if Path(target).name == "correction.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(convlens.files.os, "replace", full_disk)
    with pytest.raises(ConvlensError, match="correction.json"):
        gather_evidence(clf, fixed.classifier, audit, 1, out=tmp_path)
    assert (tmp_path / "correction.json").read_text(encoding="utf-8") == '{"old": true}'
    assert not list(tmp_path.glob(".correction.json*"))


def test_a_strategy_without_a_mean_map_is_one_clear_error(corrected, tmp_path) -> None:
    clf, fixed, audit, _evidence, _out = corrected
    data = json.loads((audit.out / "audit.json").read_text(encoding="utf-8"))
    del data["strategies"][0]["mean_map"]
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "audit.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConvlensError, match="strategy 1 of the audit has no mean map"):
        gather_evidence(clf, fixed.classifier, tmp_path / "audit", 1, out=tmp_path / "out")
    assert not (tmp_path / "out" / "correction.json").exists()


def test_a_strategy_the_audit_did_not_check_gets_its_flip_rate_measured(corrected,
                                                                         tmp_path) -> None:
    clf, fixed, audit, evidence, _out = corrected
    data = json.loads((audit.out / "audit.json").read_text(encoding="utf-8"))
    data["strategies"][0]["flip_rate"] = None  # as for a strategy below the top `checks`
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "audit.json").write_text(json.dumps(data), encoding="utf-8")
    again = gather_evidence(clf, fixed.classifier, tmp_path / "audit", 1, out=tmp_path / "out",
                            reaudit_options={"checks": 0})
    before = again["causal"]["before"]
    assert before["source"].startswith("measured here")
    assert before["flip_rate"] == evidence["causal"]["before"]["flip_rate"] == 0.95
