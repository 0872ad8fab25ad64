"""A bounded load test on 127.0.0.1: concurrent explains, flat memory, no hooks, refusals.

Bounded in count (50 concurrent, 500 in sequence) and talking only to the loopback server
started by the ``live_server`` fixture.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from serve_helpers import png_bytes

import convlens as cl
from convlens.present.figures import colorize

httpx = pytest.importorskip("httpx")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_fifty_concurrent_explains_are_correct_and_leave_no_hook(live_server, classifier,
                                                                 snapshot):
    before = snapshot(classifier.module)
    photos = [png_bytes(40, 32, seed=i) for i in range(50)]
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        ids = [client.post("/api/images", files={"file": (f"p{i}.png", data, "image/png")}
                           ).json()["id"] for i, data in enumerate(photos)]

        def one(i: int) -> dict:
            response = client.post("/api/explain", json={"image": ids[i], "methods": [
                "gradcam", "guided_backprop"], "target": str(i % 4)})
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(one, range(50)))
    for i, result in enumerate(results):
        image = Image.open(io.BytesIO(photos[i]))
        (reference,) = cl.explain(classifier, [image], ["gradcam", "guided_backprop"], target=i % 4)
        (exp,) = result["explanations"]
        assert exp["target"] == i % 4
        for entry in exp["maps"]:
            np.testing.assert_array_equal(decode(entry["image"]),
                                          colorize(reference.heatmap(entry["method"])))
    before.assert_unchanged()


def test_memory_is_flat_over_500_requests(live_server, classifier, snapshot):
    before = snapshot(classifier.module)
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        ids = [client.post("/api/images", files={"file": (f"p{i}.png", png_bytes(seed=i),
                                                          "image/png")}).json()["id"]
               for i in range(4)]

        def burst(count: int) -> None:
            for i in range(count):
                response = client.post("/api/explain", json={
                    "image": ids[i % 4], "methods": ["gradcam", "saliency"]})
                assert response.status_code == 200

        burst(100)  # warm-up: allocator pools, caches
        warm = rss_bytes()
        burst(400)
        grown = rss_bytes() - warm
    print(f"resident memory after 100 requests {warm / 2**20:.1f} MiB, "
          f"grew {grown / 2**20:.2f} MiB over the next 400")
    assert grown < 40 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"
    before.assert_unchanged()


def test_oversized_upload_and_hostile_host_are_refused_on_the_socket(live_server):
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        big = client.post("/api/images", files={"file": ("big.png", b"\0" * 300_000,
                                                         "image/png")})
        assert big.status_code == 413 and "limit" in big.json()["error"]
        hostile = client.get("/api/info", headers={"host": "attacker.example"})
        assert hostile.status_code == 403 and "DNS-rebinding" in hostile.json()["error"]
        rebinding = client.post("/api/samples/chelsea",
                                headers={"origin": "http://attacker.example"})
        assert rebinding.status_code == 403
        assert client.get("/api/info").status_code == 200
