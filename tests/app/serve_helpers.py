"""Helpers for the app tests: a tiny classifier, photos as bytes, an audit folder, a live server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny_models import TinyVGG, seeded  # noqa: E402

LABELS = ["tabby", "espresso", "rocket", "moped"]


def tiny_classifier():
    import convlens as cl

    module = seeded(TinyVGG(classes=4), dtype=torch.float32)
    return cl.Classifier(module, labels=LABELS, input_size=32, device="cpu", name="tiny")


def png_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_audit(folder: Path, per_cluster: int = 30) -> Path:
    """An audit folder following the audit.json schema: 2 classes, 2 clusters each."""
    (folder / "images").mkdir(parents=True)
    images, classes = [], []
    for c, name in enumerate(LABELS[:2]):
        clusters = []
        for k in range(2):
            members = []
            for i in range(per_cluster):
                path = f"images/{name}-{k}-{i:03d}.png"
                colour = (200 * (1 - k), 40 * c, 200 * k)
                Image.new("RGB", (24, 24), colour).save(folder / path)
                wrong = k == 1 and i % 3 == 0
                images.append({"path": path, "label": name,
                               "predicted": LABELS[1 - c] if wrong else name,
                               "probability": 0.9, "correct": not wrong, "cluster": k})
                members.append(path)
            clusters.append({"id": k, "size": per_cluster, "members": members,
                             "error_rate": 0.33 if k else 0.0, "suspicion": 0.9 if k else 0.1,
                             "flip_rate": 0.5 if k else None})
        classes.append({"name": name, "support": 2 * per_cluster, "precision": 0.8,
                        "recall": 0.83, "eigenvalues": [0.0, 0.1, 0.5], "clusters": clusters})
    suspicious = [{"class": n, "cluster": 1, "suspicion": 0.9 - 0.1 * c,
                   "why": "a tight cluster with many mistakes"} for c, n in enumerate(LABELS[:2])]
    audit = {"model": "tiny", "method": "gradcam", "layer": "features.4", "group_by": "label",
             "images": images, "errors": [{"path": "broken.jpg", "reason": "truncated"}],
             "classes": classes, "suspicious": suspicious}
    (folder / "audit.json").write_text(json.dumps(audit))
    return folder


class LiveServer:
    """The app served by uvicorn on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app, **config) -> None:
        import socket
        import threading

        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                   **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
