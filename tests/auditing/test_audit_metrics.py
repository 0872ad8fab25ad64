"""Metrics in the audit (``--metrics`` / ``cl.audit(metrics=...)``) on the planted case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from planted_bias import CLASSES, planted_case, write_planted_folder
from typer.testing import CliRunner

import convlens as cl
from convlens.auditing.scoring import accepted_metrics, parse_audit_metrics
from convlens.metrics import MetricError, get_metric

METRICS = "deletion:xplique,insertion:xplique"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    # a third of the case: enough clusters, quick
    return write_planted_folder(tmp_path_factory.mktemp("planted-metrics"), planted_case(),
                                every=3)


def cli(*args: str):
    from convlens.cli.app import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def first_run(planted):
    out = planted["root"] / "out"
    result = cli("audit", str(planted["data"]), *planted["model"], "--out", str(out),
                 "--batch-size", "16", "--metrics", METRICS,
                 "--metric-option", "deletion:xplique.batch_size=64")
    return out, result


def _audit(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text(encoding="utf-8"))


def _in_unit(value) -> bool:
    return value is not None and math.isfinite(value) and 0.0 <= value <= 1.0


def test_metric_fields_exist_and_are_in_range(first_run):
    out, result = first_run
    assert result.exit_code == 0, result.output
    data = _audit(out)
    keys = METRICS.split(",")
    assert list(data["metrics"]) == keys
    for key in keys:
        entry = data["metrics"][key]
        assert _in_unit(entry["mean"]) and entry["count"] == len(data["images"])
        low, high = entry["ci"]
        assert _in_unit(low) and _in_unit(high) and low <= entry["mean"] <= high
        assert entry["card"]["options"]["steps"] == 10 and entry["card"]["preset"] == "xplique"
        assert entry["card"]["summary"] == get_metric(key.split(":")[0]).summary
        assert f"{key}: mean {entry['mean']:.3f}" in result.output
    assert data["metrics"]["deletion:xplique"]["card"]["options"]["batch_size"] == 64
    for image in data["images"]:
        assert all(_in_unit(image["metrics"][k]) for k in keys)
    for c in data["classes"]:
        for k in c["clusters"]:
            members = [i for i in data["images"] if i["path"] in set(k["members"])]
            for key in keys:
                expected = np.mean([i["metrics"][key] for i in members])
                assert k["metrics"][key] == pytest.approx(expected, abs=1e-5)
        if c["clusters"]:
            assert all(_in_unit(c["metrics"][key]) for key in keys)
    assert all(set(s["metrics"]) == set(keys) for s in data["suspicious"])
    # existing fields keep their names
    assert {"images", "classes", "suspicious", "confusion", "accuracy"} <= set(data)


def test_report_shows_the_metrics_table_near_the_top(first_run):
    out, _ = first_run
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.index("<h2>Metrics</h2>") < html.index("<h2>Strategies</h2>")
    assert "deletion:xplique" in html and "lower is better" in html
    assert "higher is better" in html and "Per suspicious cluster" in html
    mean = _audit(out)["metrics"]["insertion:xplique"]["mean"]
    assert f"{mean:.3f}" in html


def test_rerun_resumes_without_recomputing(first_run, planted, monkeypatch):
    out, _ = first_run
    first = (out / "audit.json").read_text(encoding="utf-8")
    shards = sorted(p.name for p in (out / "store").glob("*.jsonl"))

    def never(*args, **kwargs):
        raise AssertionError("a resumed audit scored an image again")

    monkeypatch.setattr("convlens.auditing.passes.score_batch", never)
    result = cli("audit", str(planted["data"]), *planted["model"], "--out", str(out),
                 "--batch-size", "16", "--metrics", METRICS,
                 "--metric-option", "deletion:xplique.batch_size=64")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "store").glob("*.jsonl")) == shards
    assert (out / "audit.json").read_text(encoding="utf-8") == first


def test_another_metric_list_is_refused_unless_overwrite(first_run, planted, tmp_path):
    out = tmp_path / "out"
    args = ["audit", str(planted["data"]), *planted["model"], "--out", str(out),
            "--batch-size", "16"]
    assert cli(*args, "--metrics", "sparseness").exit_code == 0
    refused = cli(*args, "--metrics", "sparseness,complexity")
    assert refused.exit_code == 2
    assert "different configuration" in refused.output and "metrics" in refused.output
    assert list(_audit(out)["metrics"]) == ["sparseness"]
    assert cli(*args).exit_code == 2                         # no metrics is another config too
    replaced = cli(*args, "--metrics", "sparseness,complexity", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert list(_audit(out)["metrics"]) == ["sparseness", "complexity"]


def test_method_based_and_unknown_metrics_are_refused_with_the_accepted_list(planted, tmp_path):
    result = cli("audit", str(planted["data"]), *planted["model"], "--out",
                 str(tmp_path / "o"), "--metrics", "deletion,max_sensitivity")
    assert result.exit_code == 2
    assert "max_sensitivity" in result.output and "deletion" in result.output
    assert "insertion" in result.output and "evaluate" in result.output
    assert not (tmp_path / "o").exists()                     # refused before any work
    assert cli("audit", str(planted["data"]), *planted["model"], "--metrics",
               "nosuch").exit_code == 2
    assert set(accepted_metrics()) == {m.name for m in cl.metrics.metrics() if m.needs == "maps"}
    for name in ("randomisation", "random_logit", "max_sensitivity"):
        with pytest.raises(MetricError, match="maps-based"):
            parse_audit_metrics([name])
    with pytest.raises(MetricError, match="not among the requested"):
        parse_audit_metrics(["deletion"], {"insertion": {"steps": 3}})
    with pytest.raises(MetricError, match="no option"):
        parse_audit_metrics(["deletion"], {"deletion": {"nosuch": 3}})


def test_api_scores_equal_the_metric_on_the_full_resolution_map(planted, tmp_path):
    case = planted["case"]
    clf = cl.Classifier(case.model, labels=CLASSES, input_size=32, mean=(0, 0, 0),
                        std=(1, 1, 1), resize="squash", device="cpu")
    grads = [None if p.grad is None else p.grad.clone() for p in clf.module.parameters()]
    result = cl.audit(clf, planted["data"], out=tmp_path / "api", metrics=["deletion"],
                      metric_options={"deletion": {"step": 64}}, batch_size=32)
    data = result.data
    assert data["metrics"]["deletion"]["card"]["options"]["step"] == 64
    assert data["metrics"]["deletion"]["card"]["preset"] is None
    for p, g in zip(clf.module.parameters(), grads):                # no trace in the model
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    image = data["images"][5]
    x = clf.preprocess([planted["data"] / image["path"]])
    raw = cl.attribute(clf.module, x, "gradcam", layer="features")
    predicted = torch.tensor([CLASSES.index(image["predicted"])])
    expected = get_metric("deletion").compute(clf.module, x, raw, predicted, step=64)
    assert image["metrics"]["deletion"] == pytest.approx(float(expected.values[0]), abs=1e-5)
