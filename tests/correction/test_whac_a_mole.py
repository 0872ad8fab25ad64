"""The whac-a-mole verdict of a re-audit (``reaudit["whac_a_mole"]``), on hand-made audits:
re-clustering the same images is not a new shortcut; a new suspicious strategy is."""

from __future__ import annotations

from convlens.correction.evidence import _reaudit


def _strategy(id_: int, members: list[str], suspicion: float, error_rate: float | None = 0.0,
              kind: str = "cluster") -> dict:
    return {"id": id_, "kind": kind, "groups": ["a"], "size": len(members), "members": members,
            "suspicion": suspicion, "error_rate": error_rate, "flip_rate": None}


def _images(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}/{k:03d}.png" for k in range(start, start + n)]


TAGGED = _images("tag", 20)
CORRECTED = _strategy(1, TAGGED, 0.68, 0.95, "cross-class")
SQUARES, CIRCLES = _images("square", 30), _images("circle", 40)
BEFORE = {"strategies": [CORRECTED, _strategy(2, SQUARES[:15], 0.34),
                         _strategy(3, SQUARES[15:], 0.33), _strategy(4, CIRCLES[:20], 0.22),
                         _strategy(5, CIRCLES[20:], 0.21)]}


def test_a_reclustering_of_the_same_images_is_no_whac_a_mole() -> None:
    # the squares split 20/10 instead of 15/15, the circles split across the old halves (a
    # "new" strategy by the raw rule) and took back half the tagged images; none is suspicious
    after = {"strategies": [
        _strategy(1, SQUARES[:20], 0.31), _strategy(2, SQUARES[20:], 0.25),
        _strategy(3, CIRCLES[10:30] + TAGGED[:10], 0.24),
        _strategy(4, CIRCLES[:10] + CIRCLES[30:], 0.2)]}
    reaudit = _reaudit(BEFORE, after, CORRECTED)
    assert {row["after"] for row in reaudit["grew"]} == {1, 3}  # the raw list: noise
    assert reaudit["grew"][1]["new"] is True
    verdict = reaudit["whac_a_mole"]
    assert verdict["verdict"] == "none" and verdict["strategies"] == []
    assert "max(5 images, 25%)" in verdict["rule"]


def test_a_new_suspicious_strategy_is_a_whac_a_mole() -> None:
    fresh = _images("triangle", 12)  # images no strategy held before, now mostly mistakes
    after = {"strategies": [_strategy(1, fresh, 0.7, 0.8, "cross-class"),
                            _strategy(2, SQUARES[:15], 0.34), _strategy(3, SQUARES[15:], 0.33),
                            _strategy(4, CIRCLES[:20] + TAGGED, 0.22),
                            _strategy(5, CIRCLES[20:], 0.21)]}
    reaudit = _reaudit(BEFORE, after, CORRECTED)
    verdict = reaudit["whac_a_mole"]
    assert verdict["verdict"] == "grew"
    [mole] = verdict["strategies"]
    assert mole["after"] == 1 and mole["size_before"] == 0 and mole["grew_by"] == 12
    assert mole["closest_before"] is None
    assert any("suspicion 0.70 >= the corrected strategy's 0.68" in w for w in mole["why"])
    assert len(mole["why"]) == 1  # its error rate, 0.80, is below the corrected 0.95


def test_a_cluster_that_grew_and_got_more_suspicious_counts_a_small_growth_does_not() -> None:
    after = {"strategies": [_strategy(1, SQUARES[:15] + CIRCLES[:10], 0.45),  # 15 -> 25
                            _strategy(2, SQUARES[15:] + CIRCLES[10:14], 0.5)]}  # 15 -> 19
    verdict = _reaudit(BEFORE, after, CORRECTED)["whac_a_mole"]
    assert [m["after"] for m in verdict["strategies"]] == [1]
    assert verdict["strategies"][0]["why"] == ["suspicion rose 0.34 -> 0.45 (strategy 2 before)"]


def test_the_corrected_strategy_still_found_is_not_its_own_mole() -> None:
    after = {"strategies": [_strategy(1, TAGGED + _images("more", 10), 0.9, 0.95, "cross-class")]}
    reaudit = _reaudit(BEFORE, after, CORRECTED)
    assert reaudit["still_exists"] is True
    assert reaudit["whac_a_mole"]["verdict"] == "none"


def test_without_labels_the_suspicion_alone_decides() -> None:
    corrected = {**CORRECTED, "error_rate": None}
    before = {"strategies": [corrected]}
    after = {"strategies": [_strategy(1, _images("x", 8), 0.69, None)]}
    verdict = _reaudit(before, after, corrected)["whac_a_mole"]
    assert verdict["verdict"] == "grew"
    assert verdict["strategies"][0]["why"] == [
        "suspicion 0.69 >= the corrected strategy's 0.68"]
