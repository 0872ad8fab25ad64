"""``convlens evaluate`` and ``convlens metrics`` through the installed script."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import TINY, run
from cli_support import photo as _photo


def test_evaluate_prints_rankings_and_writes_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        _photo(photos / name)
    (photos / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    result = run("evaluate", str(photos), "--method", "gradcam,saliency", "--metric",
                 "deletion,insertion:xplique,randomisation", "--option", "deletion.step=64",
                 "--bootstrap", "50", "--out", str(out), *TINY)
    assert result.returncode == 1, result.stderr  # the broken file is reported, rest done
    assert "broken.jpg" in result.stderr
    assert "deletion (lower is better)" in result.stdout
    assert "insertion:xplique (higher is better)" in result.stdout
    data = json.loads((out / "evaluation.json").read_text())
    assert len(data["images"]) == 2 and data["cards"]["deletion"]["options"]["step"] == 64
    assert (out / "evaluation.html").exists() and (out / "curves_deletion.png").exists()


def test_bad_metric_and_option_exit_2(tmp_path: Path) -> None:
    photo = str(_photo(tmp_path / "a.png"))
    result = run("evaluate", photo, "--metric", "delition", *TINY)
    assert result.returncode == 2 and "valid metrics: deletion" in result.stderr
    result = run("evaluate", photo, "--option", "deletion.nope=3", *TINY)
    assert result.returncode == 2 and "has no option 'nope'" in result.stderr
    result = run("evaluate", photo, "--option", "deletion", *TINY)
    assert result.returncode == 2 and "METRIC.NAME=VALUE" in result.stderr


def test_metrics_lists_the_registry() -> None:
    result = run("metrics")
    assert result.returncode == 0
    for name in ("deletion", "road", "infidelity", "randomisation", "sparseness"):
        assert name in result.stdout


def test_method_options_are_validated_like_explain_s(tmp_path: Path) -> None:
    image = _photo(tmp_path / "a.png")
    result = run("evaluate", str(image), "--method", "integrated_gradients", "--metric",
                 "sparseness", "--method-option", "integrated_gradients.stepz=3",
                 "--out", str(tmp_path / "out"), *TINY)
    assert result.returncode == 2, result.stderr
    assert "did you mean 'steps'?" in result.stderr
