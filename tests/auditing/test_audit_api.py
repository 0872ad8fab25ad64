"""``cl.audit`` from Python: progress events, the notebook view, the pass's building blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from markupsafe import escape
from PIL import Image
from planted_bias import CLASSES, PlantedNet, planted_case

import convlens as cl
from convlens.attribution.core import get_method
from convlens.auditing.passes import downsize, model_fingerprint


def test_downsize_reduces_channels_and_resizes_without_normalising():
    raw = torch.zeros(2, 3, 64, 64)
    raw[0, :, :32, :32] = 1.0
    maps = downsize(raw, get_method("saliency"), 32)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float16
    assert maps[0, :16, :16].min() == 1.0 and maps[0, 16:, 16:].max() == 0.0  # max_abs
    cam = downsize(torch.full((1, 1, 7, 7), 2.0), get_method("gradcam"), 32)
    np.testing.assert_allclose(cam, 2.0)               # bilinear growth keeps the raw value
    huge = downsize(torch.full((1, 1, 4, 4), 1e9), get_method("gradcam"), 4)
    assert np.isfinite(huge).all()


def test_model_fingerprint_follows_weights_labels_and_preprocessing():
    torch.manual_seed(0)
    net = PlantedNet()
    base = model_fingerprint(net, CLASSES, "pre")
    assert model_fingerprint(net, CLASSES, "pre") == base
    assert model_fingerprint(net, CLASSES[::-1], "pre") != base
    assert model_fingerprint(net, CLASSES, "other") != base
    with torch.no_grad():
        net.fc.bias.add_(1e-3)
    assert model_fingerprint(net, CLASSES, "pre") != base


@pytest.fixture(scope="module")
def small_audit(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    case = planted_case()
    for k in range(0, len(case.images), 2):
        folder = root / "data" / CLASSES[case.labels[k]]
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "-tag" if case.tagged[k] else ""
        Image.fromarray(case.images[k]).save(folder / f"{k:04d}{suffix}.png")
    clf = cl.Classifier(case.model, labels=CLASSES, input_size=32, mean=(0, 0, 0),
                        std=(1, 1, 1), resize="squash", device="cpu")
    events = []
    result = cl.audit(clf, root / "data", out=root / "out", progress=events.append,
                      batch_size=25)
    return result, events


def test_progress_reports_every_stage(small_audit):
    result, events = small_audit
    stages = [e.stage for e in events]
    assert stages[0] == "audit" and events[0].done == 0 and events[0].total == 100
    assert {"audit", "cluster", "check", "done"} <= set(stages)
    audit_events = [e for e in events if e.stage == "audit"]
    assert [e.done for e in audit_events] == [0, 25, 50, 75, 100]


def test_notebook_view_and_python_result(small_audit):
    result, _ = small_audit
    assert isinstance(result, cl.Audit)
    assert len(result.images) == 100 and result.errors == []
    html = result._repr_html_()
    top = result.data["strategies"][0]
    assert "data:image/png;base64," in html and str(escape(top["why"])) in html
    assert "square" in repr(result)
    path = result.report()
    assert path == result.out / "report.html" and path.is_file()


def test_bad_group_by_and_non_classifier_are_refused(tmp_path):
    with pytest.raises(cl.ConvlensError, match="group-by"):
        cl.audit(cl.Classifier(PlantedNet(), labels=CLASSES, input_size=32), tmp_path,
                 group_by="cluster")
    with pytest.raises(cl.ConvlensError, match="Classifier"):
        cl.audit(PlantedNet(), tmp_path)


def test_the_audit_writes_the_causal_table_and_reuses_it(small_audit, monkeypatch):
    """The top strategy (the tag) gets ``causal_check``: every size at most a quarter of the
    image, both infills, Wilson intervals, the verdict; a rerun reads the stored result."""
    import json

    from convlens.auditing import causal

    result, _ = small_audit
    cluster = result.data["strategies"][0]  # the tag's strategy, checked first
    check = cluster["causal_check"]
    assert check["verdict"] == "matters" and check["sentence"] == cluster["causal"]
    assert check["flip_rate"] == cluster["flip_rate"] and check["members"] == cluster[
        "checked_members"]
    assert {(r["size"], r["infill"]) for r in check["table"]} == {
        (round(s, 6), i) for s in causal.SIZES for i in causal.INFILLS}
    for row in check["table"]:
        assert row["area"] <= 0.25
        for kind in ("hot", "random", "cold"):
            low, high = row[kind]["ci"]
            assert 0 <= low <= row[kind]["rate"] <= high <= 1
    json.dumps(check, allow_nan=False)

    def no_forwards(*args, **kwargs):
        raise AssertionError("a rerun must read the stored check")

    monkeypatch.setattr(causal, "causal_batch", no_forwards)
    again = cl.audit(result.classifier, result.dataset.root, out=result.out, batch_size=25)
    assert again.data == result.data


def test_the_report_computes_its_maps_through_the_audits_engine(small_audit, tmp_path):
    """The report's full-size maps are decoded and attributed by the audit's engine (the
    same path as the pass and the causal check); every image the page links is written."""
    import re

    from convlens.auditing.report import report_maps
    from convlens.engines.local import LocalEngine

    seen = []

    class Spy(LocalEngine):
        def map_units(self, entries, preprocessing, factory, **options):
            seen.append(factory)
            yield from super().map_units(entries, preprocessing, factory, **options)

    result, _ = small_audit
    original, result.engine = result.engine, Spy()
    try:
        path = result.report(tmp_path / "r.html")
    finally:
        result.engine = original
    assert [f.function for f in seen] == [report_maps]
    linked = set(re.findall(r'src="(report-files/[^"]+\.jpg)"', path.read_text("utf-8")))
    assert any(re.search(r"-\d+\.jpg$", src) for src in linked)      # map overlays
    assert all((tmp_path / src).is_file() for src in linked)
