"""P-ClArC on the planted tag => square net: the audit's strategy projected out."""

from __future__ import annotations

import pytest
import torch

planted_bias = pytest.importorskip("planted_bias")

import convlens as cl  # noqa: E402
from convlens.correction.run import correct  # noqa: E402
from convlens.errors import CorrectionError  # noqa: E402


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("pclarc")
    planted = planted_bias.write_planted_folder(root, planted_bias.planted_case(0))
    clf = planted_bias.planted_classifier(planted)
    return clf, cl.audit(clf, planted["data"], out=root / "audit", seed=0)


def _effect(module) -> tuple[float, float]:
    """Clean accuracy, and clean accuracy minus accuracy on tagged images of other classes,
    on a fresh draw the audit never saw."""
    images, labels, tagged = planted_bias.make_set(planted_bias.audit_counts(), seed=50)
    x, y = planted_bias.to_tensor(images), torch.as_tensor(labels)
    tag = torch.as_tensor(tagged).bool()
    other = tag & (y != planted_bias.CLASSES.index(planted_bias.TAG_CLASS))
    with torch.no_grad():
        predicted = module(x).argmax(1)
    clean = (predicted[~tag] == y[~tag]).float().mean().item()
    return clean, clean - (predicted[other] == y[other]).float().mean().item()


def test_pclarc_removes_the_tag_effect_without_costing_clean_accuracy(audited, snapshot) -> None:
    clf, audit = audited
    watch = snapshot(clf.module)
    fixed = correct(clf, audit, 1)
    watch.assert_unchanged()
    clean_before, effect_before = _effect(clf.module)
    clean_after, effect_after = _effect(fixed.classifier.module)
    assert effect_before > 0.5  # the planted net uses the tag
    assert effect_after <= 0.2 * effect_before  # the bar: the effect shrinks >= 80 %
    assert clean_after >= clean_before - 0.01
    assert set(fixed.direction.classes) <= {"circle", "triangle"}  # class-matched contrast
    assert fixed.classifier.labels == clf.labels
    assert cl.attribute(fixed.classifier, torch.rand(1, 3, 32, 32), "lrp").shape == (1, 3, 32, 32)


def test_an_unknown_strategy_and_a_folder_without_an_audit_are_one_clear_error(
        audited, tmp_path) -> None:
    clf, audit = audited
    with pytest.raises(CorrectionError, match="no strategy 99; its strategies: 1"):
        correct(clf, audit, 99)
    with pytest.raises(CorrectionError, match="holds no audit.json"):
        correct(clf, tmp_path, 1)


@pytest.mark.parametrize("method", ["pclarc", "rrclarc", "last-layer"])
def test_the_corrected_folder_loads_in_a_fresh_process_and_explains_with_every_method(
        audited, tmp_path, method) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    from convlens.correction.folder import model_source, save_correction

    clf, audit = audited
    fixed = correct(clf, audit, 1, method=method, epochs=2)
    weights = tmp_path / "w.safetensors"  # a copy: the test changes it at the end
    weights.write_bytes((Path(audit.out).parent / "w.safetensors").read_bytes())
    source = model_source(f"{Path(planted_bias.__file__).resolve()}:build", weights=weights)
    folder = save_correction(fixed, tmp_path / "FIXED", source=source, audit=audit.out)
    card = json.loads((folder / "card.json").read_text())
    assert card["method"] == method and card["layer"] == fixed.direction.layer
    assert card["projected"] == (method == "pclarc")
    assert (card["weights"] is None) == (method == "pclarc")
    if method != "pclarc":  # what it trained on, with what, and what it changed
        assert card["training"]["data"]["images"] == fixed.data["images"]
        assert card["training"]["settings"]["seed"] == 0 and card["training"]["history"]
        assert card["weights"]["keys"] == ["fc.bias", "fc.weight"]
    assert card["source"]["weights_sha256"] and card["labels"] == clf.labels
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(fixed.classifier.module(x), tmp_path / "expected.pt")
    tests = Path(__file__).resolve().parents[1]
    script = f"""
import sys, torch
sys.path[:0] = [{str(tests)!r}]
import convlens as cl
from support import FAST_OPTIONS
clf = cl.load_model({str(folder)!r}, device="cpu")
x = torch.load({str(tmp_path / 'x.pt')!r})
with torch.no_grad():
    torch.testing.assert_close(clf.module(x), torch.load({str(tmp_path / 'expected.pt')!r}))
for method in cl.methods():
    out = cl.attribute(clf, x, method.name, **FAST_OPTIONS.get(method.name, {{}}))
    assert bool(torch.isfinite(out).all()), method.name
print("explained", len(cl.methods()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "explained" in done.stdout
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(cl.ConvlensError, match="changed since the correction"):
        cl.load_model(folder)
