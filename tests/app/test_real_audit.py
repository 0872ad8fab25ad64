"""The audit browser on a folder written by ``cl.audit`` itself (the planted-tag case)."""

from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("fastapi")
planted_bias = pytest.importorskip("planted_bias")

import convlens as cl  # noqa: E402
from convlens.app.server import ServeSettings, create_app  # noqa: E402


@pytest.mark.slow
def test_browsing_a_real_audit(tmp_path):
    from fastapi.testclient import TestClient

    if not hasattr(cl, "audit"):
        pytest.skip("cl.audit is not in this build")
    case = planted_bias.planted_case()
    classes = planted_bias.CLASSES
    for k in range(0, len(case.images), 2):
        folder = tmp_path / "data" / classes[case.labels[k]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(case.images[k]).save(folder / f"{k:04d}.png")
    clf = cl.Classifier(case.model, labels=classes, input_size=32, mean=(0, 0, 0),
                        std=(1, 1, 1), resize="squash", device="cpu")
    result = cl.audit(clf, tmp_path / "data", out=tmp_path / "out", batch_size=25,
                      concepts=True)
    client = TestClient(create_app(clf, audits=[tmp_path / "out"],
                                   settings=ServeSettings(allowed_hosts=("testserver",))))
    summary = client.get("/api/audits/0").json()
    assert summary["images"] == len(range(0, len(case.images), 2))
    assert {c["name"] for c in summary["classes"]} <= set(classes)
    views = ([{"label": s["class"], "cluster": s["cluster"]} for s in summary["suspicious"]]
             or [{"label": summary["classes"][0]["name"]}])
    page = client.get("/api/audits/0/images", params=views[0] | {"limit": 5}).json()
    assert page["total"] >= len(page["items"]) > 0
    thumb = client.get(f"/api/audits/0/thumbs/{page['items'][0]['index']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    # the strategies (convlens 10): listed without their members, browsed by id
    data = result.data
    assert [s["id"] for s in summary["strategies"]] == [s["id"] for s in data["strategies"]]
    assert all("members" not in s and s["why"] for s in summary["strategies"])
    first = data["strategies"][0]
    page = client.get("/api/audits/0/images", params={"strategy": first["id"], "limit": 500})
    assert page.status_code == 200
    names = sorted(item["name"] for item in page.json()["items"])
    assert names == sorted(m.rsplit("/", 1)[-1] for m in first["members"])
    missing = client.get("/api/audits/0/images", params={"strategy": 999})
    assert missing.status_code == 404 and "no strategy 999" in missing.json()["error"]
    # concepts (convlens 11): each strategy's channels, browsed as their reference images
    listed = summary["strategies"][0]
    assert listed["concept_words"] == first["concept_words"] and listed["concepts"]
    concept = first["concepts"][0]
    assert {k: listed["concepts"][0][k] for k in ("channel", "layer")} == \
        {k: concept[k] for k in ("channel", "layer")}
    page = client.get("/api/audits/0/images", params={"strategy": first["id"],
                                                      "concept": concept["channel"]}).json()
    assert [item["name"] for item in page["items"]] == \
        [r["path"].rsplit("/", 1)[-1] for r in concept["references"]]
    unknown = client.get("/api/audits/0/images", params={"strategy": first["id"],
                                                         "concept": 10_000})
    assert unknown.status_code == 404 and "has no concept 10000" in unknown.json()["error"]
