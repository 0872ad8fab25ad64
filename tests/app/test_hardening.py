"""``convlens serve`` under abuse: abandoned and oversized work, big photos, hostile files and
clients, stray routes; through the HTTP API (live uvicorn on 127.0.0.1 where sockets
matter) or the CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import warnings
from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import LiveServer, png_bytes

from convlens.app.server import ServeSettings, create_app

httpx = pytest.importorskip("httpx")
fastapi_testclient = pytest.importorskip("fastapi.testclient")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def client_for(classifier, audits=(), **settings):
    settings.setdefault("allowed_hosts", ("testserver", "127.0.0.1", "localhost"))
    app = create_app(classifier, audits=audits, settings=ServeSettings(**settings))
    return fastapi_testclient.TestClient(app)


def upload(client, data=None, name="photo.png"):
    response = client.post("/api/images", files={"file": (name, data or png_bytes(),
                                                          "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def raw_request(port: int, method: str, path: str, body: bytes = b"") -> socket.socket:
    """Send one HTTP/1.1 request on a fresh socket and return the socket, unread."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def test_an_abandoned_explain_is_cancelled_and_info_answers_meanwhile(
        live_server, classifier, snapshot):
    before = snapshot(classifier.module)
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        token = client.post("/api/images", files={"file": ("p.png", png_bytes(), "image/png")}
                            ).json()["id"]
        real = classifier.module.forward
        passes, first, go = [], threading.Event(), threading.Event()

        def slow_forward(x):  # the first pass waits for the test, the others take a while
            passes.append(1)
            if len(passes) == 1:
                first.set()
                go.wait(30)
            else:
                threading.Event().wait(0.25)
            return real(x)

        classifier.module.forward = slow_forward  # undone below (del), leaving no attribute
        body = json.dumps({"image": token, "methods": ["gradcam", "saliency", "guided_backprop"],
                           "target": "top:4"}).encode()
        abandoned = raw_request(live_server.port, "POST", "/api/explain", body)
        assert first.wait(30), "the explain never reached the model"
        info = client.get("/api/info", timeout=10)  # answered while the model is busy
        assert info.status_code == 200 and info.json()["model"] == "tiny"
        assert client.get("/static/app.js", timeout=10).status_code == 200
        assert not go.is_set() and len(passes) == 1
        abandoned.close()  # the client goes away
        go.set()
        state = live_server.server.config.app.state.convlens
        assert state.gate.lock.acquire(timeout=60), "the abandoned explain kept the model"
        state.gate.lock.release()
        abandoned_passes = len(passes)
        del classifier.module.forward
        full = httpx.post(live_server.url + "/api/explain", content=body, timeout=60,
                          headers={"content-type": "application/json"})
        assert full.status_code == 200 and len(full.json()["explanations"]) == 4
    # the whole explain takes several forward passes; the abandoned one stopped early
    import convlens as cl

    counted = []
    handle = classifier.module.register_forward_pre_hook(lambda *_: counted.append(1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cl.ConvlensWarning)
            cl.explain(classifier, [Image.open(io.BytesIO(png_bytes()))],
                       ["gradcam", "saliency", "guided_backprop"], target="top:4")
    finally:
        handle.remove()
    assert abandoned_passes < len(counted), (abandoned_passes, len(counted))
    before.assert_unchanged()


def test_sigterm_stops_the_server_in_the_middle_of_a_computation(tmp_path):
    from cli_support import script

    with socket.socket() as probe:  # a free port (--port 0 works too, but not on old code)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [*script(), "serve", "--model", f"{FIXTURES / 'tiny_model.py'}:build_slow",
               "--input-size", "32", "--device", "cpu", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    try:
        line = server.stdout.readline()
        assert "serving" in line, (line, server.stderr.read() if server.poll() else "")
        url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        with httpx.Client(base_url=url, timeout=120,
                          transport=httpx.HTTPTransport(retries=20)) as client:
            token = client.post("/api/images", files={"file": ("p.png", png_bytes(),
                                                               "image/png")}).json()["id"]
            answers = []
            # top:4 x 3 methods: many one-second forward passes
            explain = threading.Thread(target=lambda: answers.append(client.post(
                "/api/explain", json={"image": token, "target": "top:4",
                                      "methods": ["gradcam", "saliency", "smoothgrad"]})))
            explain.start()
            started = client.get("/api/info")  # the server is up and answering
            assert started.status_code == 200
            threading.Event().wait(1.5)  # the explain is inside the model now
            server.send_signal(signal.SIGTERM)
            explain.join(120)
        server.wait(120)
        assert answers, "the explain got no answer"
        # cancelled, not finished: the server did not wait for the computation
        assert answers[0].status_code == 503, answers[0].text[:300]
        assert "stopping" in answers[0].json()["error"]
        assert "Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_one_request_may_ask_for_a_bounded_amount_of_work(classifier):
    from convlens.app.server import MAX_MAPS, MAX_TARGETS

    client = client_for(classifier)
    token = upload(client)["id"]
    many = client.post("/api/explain", json={"image": token, "methods": ["scorecam"],
                                             "target": "top:30"})
    assert many.status_code == 422
    message = many.json()["error"]
    assert f"at most {MAX_TARGETS} classes" in message and "convlens explain" in message
    assert "top:30" in message and "\n" not in message
    methods = ["gradcam", "saliency", "guided_backprop", "input_x_gradient", "deconvnet"]
    too_many = client.post("/api/explain", json={"image": token, "methods": methods * 7,
                                                 "target": "pred"})
    assert too_many.status_code == 422 and f"{MAX_MAPS} maps" in too_many.json()["error"]
    allowed = client.post("/api/explain", json={"image": token, "methods": ["gradcam"],
                                                "target": "top:4"})
    assert allowed.status_code == 200 and len(allowed.json()["explanations"]) == 4
    assert client.get("/api/info").json()["limits"] == {"targets": MAX_TARGETS,
                                                        "maps": MAX_MAPS}


def test_uploads_are_kept_as_bounded_png_working_copies(classifier):
    from convlens.app.uploads import WORKING_SIDE, PhotoStore, StoredPhoto

    client = client_for(classifier)
    big = Image.new("RGB", (4000, 3000), (30, 120, 200))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 200_000  # small file, 36 MB of pixels
    photo = upload(client, buffer.getvalue(), "big.png")
    assert (photo["width"], photo["height"]) == (WORKING_SIDE, 768)
    assert (photo["original_width"], photo["original_height"]) == (4000, 3000)
    shown = Image.open(io.BytesIO(client.get(f"/api/images/{photo['id']}").content))
    assert shown.size == (WORKING_SIDE, 768)
    explained = client.post("/api/explain", json={"image": photo["id"], "methods": ["gradcam"]})
    assert explained.status_code == 200
    heat = explained.json()["explanations"][0]["maps"][0]["image"]
    import base64

    drawn = Image.open(io.BytesIO(base64.b64decode(heat.split(",", 1)[1])))
    assert drawn.size == (WORKING_SIDE, 768)
    state = client.app.state.convlens
    assert all(isinstance(p, StoredPhoto) and isinstance(p.png, bytes)
               for p in state.photos._photos.values())
    # the store is bounded in bytes: the oldest photos go first
    state.photos = PhotoStore(max_count=64, max_bytes=40_000)
    ids = [upload(client, png_bytes(64, 64, seed=i))["id"] for i in range(6)]
    assert state.photos.total_bytes <= 40_000 and len(state.photos) < 6
    gone = client.post("/api/explain", json={"image": ids[0], "methods": ["gradcam"]})
    assert gone.status_code == 400 and "upload the photo again" in gone.json()["error"]
    assert client.get(f"/api/images/{ids[-1]}").status_code == 200


def test_every_answer_carries_the_security_headers(classifier):
    client = client_for(classifier)
    answers = [client.get("/"), client.get("/api/info"), client.get("/static/app.js"),
               client.get("/no/such/page"), client.get("/api/info", headers={"host": "evil.com"}),
               client.post("/api/explain", content=b"{", headers={"content-type":
                                                                 "application/json"})]
    for answer in answers:
        policy = answer.headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, answer.url
        assert answer.headers.get("x-content-type-options") == "nosniff"
        assert answer.headers.get("referrer-policy") == "no-referrer"
    # the page needs nothing the policy forbids: no inline script or style attribute
    page = answers[0].text
    assert "<script>" not in page and "style=" not in page and "onclick=" not in page


def test_stray_requests_get_a_json_error_line(classifier):
    client = client_for(classifier)
    for response, status in [
        (client.post("/api/visualize", content=b"{not json",
                     headers={"content-type": "application/json"}), 422),
        (client.post("/api/explain", content=b"[1, 2]",
                     headers={"content-type": "application/json"}), 422),
        (client.get("/api/nothing-here"), 404),
        (client.get("/static/missing.js"), 404),
        (client.delete("/api/info"), 405),
    ]:
        assert response.status_code == status, (response.url, response.text)
        body = response.json()
        assert set(body) == {"error"} and "\n" not in body["error"], body


def test_an_oversize_chunked_upload_is_413_on_the_socket(live_server):
    def chunks(head: bytes):  # chunked transfer: no Content-Length, counted as it arrives
        yield head
        for _ in range(10):
            yield b"x" * 25_000

    form = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        for head in (form, b"x" * 25_000):  # the parser gives up at once on the second
            big = client.post("/api/images", content=chunks(head),
                              headers={"content-type": "multipart/form-data; boundary=b"})
            assert big.status_code == 413, big.text
            assert set(big.json()) == {"error"} and "limit" in big.json()["error"]
        assert client.get("/api/info").status_code == 200


def test_stalled_bodies_get_408_and_slow_headers_a_hang_up(classifier, monkeypatch):
    from convlens.app import guard, runner

    monkeypatch.setattr(guard, "BODY_IDLE_SECONDS", 0.5)
    monkeypatch.setattr(runner, "HEADER_SECONDS", 0.5)
    app = create_app(classifier, settings=ServeSettings(max_upload_bytes=5000))
    server = LiveServer(app, http=runner._slow_client_protocol())
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(f"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"im"
                     .encode())
        answer = b""  # the body never completes
        while b'"}' not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"error"' in answer and "stalled" in answer
        sock.close()
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        slow.sendall(f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode())
        assert slow.recv(4096) == b""  # headers never finished: the server hangs up
        slow.close()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/api/info").status_code == 200  # patient clients still served
    finally:
        server.close()


def test_audit_image_paths_are_confined_to_the_data_folder(classifier, audit_folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (24, 24), (255, 0, 0)).save(outside / "secret.png")
    (audit_folder / "images" / "link.png").symlink_to(outside / "secret.png")
    audit = json.loads((audit_folder / "audit.json").read_text())
    crafted = ["/" + str(outside / "secret.png").lstrip("/"), "../outside/secret.png",
               "images/../../outside/secret.png", "images/link.png", ""]
    for path in crafted:
        audit["images"].append(dict(audit["images"][0], path=path))
    audit["data"] = str(audit_folder / "images")
    (audit_folder / "audit.json").write_text(json.dumps(audit))
    client = client_for(classifier, audits=[audit_folder])
    first = len(audit["images"]) - len(crafted)
    assert client.get("/api/audits/0/thumbs/0").status_code == 200  # the legitimate ones
    for index, path in enumerate(crafted, start=first):
        refused = client.get(f"/api/audits/0/thumbs/{index}")
        assert refused.status_code == 404, (path, refused.status_code)
        assert "data folder" in refused.json()["error"]


def test_the_page_names_its_icon_and_the_icon_is_served(classifier):
    client = client_for(classifier)
    page = client.get("/").text
    assert 'rel="icon"' in page and 'href="/static/favicon.svg"' in page
    for path in ("/static/favicon.svg", "/favicon.ico"):
        icon = client.get(path)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith(
            "image/svg+xml")
        assert icon.content.lstrip().startswith(b"<svg")
