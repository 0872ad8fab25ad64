"""The HTTP API through FastAPI's test client: the library's results, errors and guards."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from serve_helpers import LABELS, png_bytes

import convlens as cl
from convlens.app.server import ServeSettings, create_app

fastapi_testclient = pytest.importorskip("fastapi.testclient")


def client_for(classifier, audits=(), **settings):
    settings.setdefault("allowed_hosts", ("testserver", "127.0.0.1", "localhost"))
    app = create_app(classifier, audits=audits, settings=ServeSettings(**settings))
    return fastapi_testclient.TestClient(app)


def upload(client, data=None, name="photo.png"):
    return client.post("/api/images", files={"file": (name, data or png_bytes(), "image/png")})


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_page_and_info_list_methods_by_family_and_layers(classifier):
    client = client_for(classifier)
    page = client.get("/")
    assert page.status_code == 200 and "convlens" in page.text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").json()
    assert set(info["families"]) == {m.family for m in cl.methods()}
    for family, entries in info["families"].items():
        assert [m["name"] for m in entries] == [m.name for m in cl.methods(family)]
    assert all(m["summary"] for family in info["families"].values() for m in family)
    assert [layer["name"] for layer in info["layers"]] == [
        i.name for i in cl.layers(classifier) if i.output_shape and len(i.output_shape) == 3]
    assert info["labels"] == LABELS


def test_upload_predicts_like_the_library(classifier):
    client = client_for(classifier)
    response = upload(client)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = classifier.predict([Image.open(io.BytesIO(png_bytes()))], top=4)[0]
    assert [(p["label"], pytest.approx(p["probability"], abs=1e-6)) for p in body["predictions"]
            ] == [(label, pytest.approx(p, abs=1e-6)) for label, p in expected]
    photo = client.get(f"/api/images/{body['id']}")
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(photo.content)).size == (48, 40)


def test_explain_returns_the_library_maps_and_raw_scales(classifier):
    client = client_for(classifier)
    token = upload(client).json()["id"]
    response = client.post("/api/explain", json={"image": token, "methods": ["gradcam",
                                                                             "saliency"]})
    assert response.status_code == 200, response.text
    (exp,) = response.json()["explanations"]
    image = Image.open(io.BytesIO(png_bytes()))
    (reference,) = cl.explain(classifier, [image], ["gradcam", "saliency"])
    assert exp["target"] == reference.target
    for entry in exp["maps"]:
        pixels = decode(entry["image"])
        assert pixels.shape == (40, 48, 3)
        from convlens.present.figures import colorize

        np.testing.assert_array_equal(pixels, colorize(reference.heatmap(entry["method"])))
        assert entry["high"] == pytest.approx(reference.scales[entry["method"]], rel=1e-6)
        assert entry["low"] == 0.0


def test_target_forms_top_k_index_and_name(classifier):
    client = client_for(classifier)
    token = upload(client).json()["id"]
    top = client.post("/api/explain", json={"image": token, "methods": ["gradcam"],
                                            "target": "top:3"}).json()["explanations"]
    assert len(top) == 3 and len({e["target"] for e in top}) == 3
    named = client.post("/api/explain", json={"image": token, "methods": ["gradcam"],
                                              "target": "rocket"}).json()["explanations"]
    assert [(e["target"], e["label"]) for e in named] == [(2, "rocket")]
    assert all(isinstance(note, str) for e in named for note in e["notes"])
    index = client.post("/api/explain", json={"image": token, "methods": ["gradcam"],
                                              "target": "3"}).json()["explanations"]
    assert index[0]["label"] == "moped"
    signed = client.post("/api/explain", json={"image": token, "methods": ["saliency"],
                                               "sign": "all"}).json()["explanations"]
    assert signed[0]["maps"][0]["low"] == -signed[0]["maps"][0]["high"]


def test_errors_are_the_cli_one_line_messages(classifier):
    client = client_for(classifier)
    text = upload(client, b"hello, I am not a photo\n", name="notes.txt")
    assert text.status_code == 400
    message = text.json()["error"]
    assert message.startswith("notes.txt: ") and "\n" not in message
    token = upload(client).json()["id"]
    for body, expected in [
        ({"image": token, "methods": ["nope"]}, "unknown method 'nope'"),
        ({"image": token, "methods": ["gradcam"], "layer": "missing"}, "missing"),
        ({"image": token, "methods": ["gradcam"], "target": "giraffe"}, "giraffe"),
        ({"image": "not-an-id", "methods": ["gradcam"]}, "unknown image id"),
    ]:
        response = client.post("/api/explain", json=body)
        assert response.status_code == 400, response.text
        assert expected in response.json()["error"]
    malformed = client.post("/api/explain", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["error"].startswith("bad request")
    with pytest.raises(cl.ConvlensError) as caught:
        cl.explain(classifier, [Image.open(io.BytesIO(png_bytes()))], ["nope"])
    bad = client.post("/api/explain", json={"image": token, "methods": ["nope"]}).json()
    assert bad["error"] == str(caught.value)


def test_oversized_uploads_are_refused_with_413(classifier):
    client = client_for(classifier, max_upload_bytes=2000)
    big = png_bytes(200, 200)
    assert len(big) > 2000
    response = upload(client, big)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the cap is counted while the body arrives
        yield b"x" * 1500
        yield b"x" * 1500

    streamed = client.post("/api/images", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    pixels = client_for(classifier, max_pixels=1000)
    response = upload(pixels, png_bytes(40, 40))
    assert response.status_code == 413 and "pixels" in response.json()["error"]


def test_hostile_host_and_origin_are_refused(classifier):
    client = client_for(classifier)
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 403
    assert client.get("/", headers={"host": "127.0.0.1.evil.example:8000"}).status_code == 403
    forged = client.post("/api/samples/chelsea", headers={"origin": "http://evil.example"})
    assert forged.status_code == 403 and "Origin" in forged.json()["error"]
    same = client.get("/api/info", headers={"origin": "http://testserver"})
    assert same.status_code == 200


def test_no_hook_is_left_after_requests_and_errors(classifier, snapshot):
    before = snapshot(classifier.module)
    client = client_for(classifier)
    token = upload(client).json()["id"]
    client.post("/api/explain", json={"image": token, "methods": ["gradcam", "guided_backprop",
                                                                  "lrp_epsilon"]})
    client.post("/api/explain", json={"image": token, "methods": ["gradcam"], "layer": "x"})
    lines = client.post("/api/visualize", json={"layer": "features.2", "channel": 1,
                                                "steps": 3, "size": 32}).text.splitlines()
    assert '"done": true' in lines[-1]
    before.assert_unchanged()


def test_visualize_streams_progress_then_the_image(classifier):
    import json

    client = client_for(classifier)
    with client.stream("POST", "/api/visualize", json={"class": "rocket", "steps": 8,
                                                       "size": 32}) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    steps = [e["step"] for e in events if "step" in e]
    assert steps == sorted(steps) and steps[-1] == 8 and len(steps) >= 2
    assert events[-1]["done"] and decode(events[-1]["image"]).shape == (32, 32, 3)
    bad = client.post("/api/visualize", json={"layer": "features.2", "channel": 999,
                                              "steps": 2, "size": 32})
    assert "error" in bad.text.splitlines()[-1]
    assert client.post("/api/visualize", json={"steps": 0}).status_code == 400


def test_visualize_cancelled_mid_flight_leaves_no_hook(classifier, snapshot):
    import threading

    before = snapshot(classifier.module)
    client = client_for(classifier)
    state = client.app.state.convlens
    started = threading.Event()

    with client.stream("POST", "/api/visualize", json={"layer": "features.2", "channel": 0,
                                                       "steps": 1000, "size": 32}) as response:
        for line in response.iter_lines():
            if line:
                started.set()
                break
    # the stream was closed after its first event: the worker sees the cancel and stops
    assert started.is_set()
    assert state.gate.lock.acquire(timeout=60), "the visualize worker never released the model"
    state.gate.lock.release()
    before.assert_unchanged()


def test_audit_browsing_pages_and_filters(classifier, audit_folder):
    client = client_for(classifier, audits=[audit_folder])
    assert client.get("/api/info").json()["audits"] == [{"id": 0, "name": "audit-out"}]
    summary = client.get("/api/audits/0").json()
    assert [s["suspicion"] for s in summary["suspicious"]] == sorted(
        [s["suspicion"] for s in summary["suspicious"]], reverse=True)
    assert summary["images"] == 120 and summary["mistakes"] == 20 and summary["errors"] == 1
    first = client.get("/api/audits/0/images", params={"label": "tabby", "cluster": 1,
                                                       "limit": 12}).json()
    assert first["total"] == 30 and len(first["items"]) == 12
    rest = client.get("/api/audits/0/images", params={"label": "tabby", "cluster": 1,
                                                      "offset": 24, "limit": 12}).json()
    assert len(rest["items"]) == 6
    seen = {i["index"] for i in first["items"]} | {i["index"] for i in rest["items"]}
    assert len(seen) == 18
    wrong = client.get("/api/audits/0/images", params={"mistakes": True, "limit": 200}).json()
    assert wrong["total"] == 20 and not any(i["correct"] for i in wrong["items"])
    thumb = client.get(f"/api/audits/0/thumbs/{first['items'][0]['index']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).getpixel((5, 5))[2] > 150  # cluster 1: blue
    assert client.get("/api/audits/0/thumbs/9999").status_code == 404
    assert client.get("/api/audits/3").status_code == 404
    # ids only: a path in the URL is not an id
    assert client.get("/api/audits/0/thumbs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_a_folder_without_audit_json_is_a_clear_error(classifier, tmp_path):
    from convlens.app.audits import AuditError

    with pytest.raises(AuditError, match="no audit.json"):
        create_app(classifier, audits=[tmp_path])


def test_explain_crp_from_the_page_draws_one_map_and_names_its_channels(classifier):
    """Method space "concepts" (crp) through the page's API: one map (the sum of each
    image's most relevant channels' maps), listed with its space, and a note saying so."""
    client = client_for(classifier)
    info = client.get("/api/info").json()
    (entry,) = [m for family in info["families"].values() for m in family if m["name"] == "crp"]
    assert entry["space"] == "concepts"
    token = upload(client).json()["id"]
    response = client.post("/api/explain", json={"image": token, "methods": ["crp"]})
    assert response.status_code == 200, response.text
    (exp,) = response.json()["explanations"]
    (shown,) = exp["maps"]
    assert shown["method"] == "crp" and decode(shown["image"]).shape == (40, 48, 3)
    assert any("each image's 4 most relevant channels" in note for note in exp["notes"])
