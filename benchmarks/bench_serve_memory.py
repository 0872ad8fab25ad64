"""``convlens serve`` under a long mixed load: the server's resident memory, and how fast an
abandoned computation and a SIGTERM let go of the model.

Not a test. Starts the real ``convlens serve`` (bundled model unless ``--model``) as a child
process on 127.0.0.1 (a free port; nothing else is contacted), with a synthetic audit folder,
and sends ``--requests`` requests in cycles of ten:

* 1 upload of a large-dimension PNG (``--big`` pixels square, one colour with a few stripes:
  ~60 KB of file, ~190 MB decoded at 8000 px; the first 100 cycles alternate two sizes),
* 1 upload of a phone-size JPEG (2000 x 1500),
* 3 explains (gradcam + saliency; one in three with ``target="top:3"``),
* 2 ``/api/info``, 1 photo (``/api/images/ID``), 1 audit page, 1 audit thumbnail,

printing the server's ``VmRSS`` (from ``/proc/PID/status``, benchmarks/_proc.py) every 100
requests. Then:

* release: an explain that takes minutes (scorecam, ``top:8``) is sent on a raw socket,
  the socket is closed once the computation has started, and a gradcam explain is sent at
  once; its latency minus a plain gradcam's is how long the abandoned work held the model;
* stop: the same long explain again, then SIGTERM; the time until the process has exited.

Usage::

    PYTHONPATH=src python benchmarks/bench_serve_memory.py               # 1,000 requests
    PYTHONPATH=src python benchmarks/bench_serve_memory.py --requests 200 --big 4000

The allocator environment of the child is printed (``MALLOC_*``; none by default). Linux only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import status_kib  # noqa: E402


def big_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` PNG that compresses to tens of KB (flat colour, a few stripes)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (40 + seed % 50, 90, 160))
    draw = ImageDraw.Draw(image)
    for k in range(8):
        x = (k + 1) * side // 9
        draw.rectangle([x, 0, x + side // 40, side], fill=(220, 180 - 10 * k, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def phone_jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    small = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((2000, 1500), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_audit(folder: Path, count: int = 120) -> Path:
    """An audit folder following the audit.json schema (2 classes, 2 clusters each)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    images = []
    for i in range(count):
        path = f"images/{i:04d}.png"
        Image.new("RGB", (320, 240), (i % 255, 80, 200 - i % 200)).save(folder / path)
        images.append({"path": path, "label": ["a", "b"][i % 2], "predicted": "a",
                       "probability": 0.9, "correct": i % 2 == 0, "cluster": i % 4 // 2})
    classes = [{"name": n, "support": count // 2, "precision": 0.8, "recall": 0.8,
                "clusters": [{"id": k, "size": count // 4, "error_rate": 0.1 * k,
                              "suspicion": 0.5 * k, "flip_rate": None} for k in range(2)]}
               for n in ("a", "b")]
    audit = {"model": "bundled", "method": "gradcam", "layer": None, "group_by": "label",
             "data": str(folder), "images": images, "errors": [], "classes": classes,
             "suspicious": [{"class": "a", "cluster": 1, "suspicion": 0.5, "why": "test"}]}
    (folder / "audit.json").write_text(json.dumps(audit))
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, audit: Path, port: int) -> subprocess.Popen:
    script = Path(sys.executable).with_name("convlens")  # the installed entry point
    command = [str(script), "serve", "--port", str(port),
               "--audit", str(audit), "--max-upload-mb", "50"]
    if args.model:
        command += ["--model", args.model, "--input-size", "32"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "NO_COLOR": "1"})
    line = server.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"the server did not start: {line}{server.stderr.read()}")
    return server


def rss_mib(pid: int) -> float:
    return status_kib("VmRSS", pid) / 1024


def long_explain_socket(port: int, token: str) -> socket.socket:
    body = json.dumps({"image": token, "methods": ["scorecam"], "target": "top:8"}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall((f"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                  ).encode() + body)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--big", type=int, default=8000, help="side of the large PNGs")
    parser.add_argument("--model", default=None, help="a --model factory (default: bundled)")
    parser.add_argument("--load-only", action="store_true",
                        help="skip the release and SIGTERM measurements (e.g. on code that "
                             "would hold the model for minutes)")
    args = parser.parse_args()
    import httpx

    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; allocator env: {malloc or 'none (glibc defaults)'}")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        audit = make_audit(Path(tmp) / "audit")
        bigs = [big_png(args.big, 0), big_png(args.big * 3 // 4, 1)]
        phones = [phone_jpeg(i) for i in range(3)]
        print(f"large PNGs: {args.big} px square {len(bigs[0]):,} bytes, "
              f"{args.big * 3 // 4} px {len(bigs[1]):,} bytes; phone JPEG {len(phones[0]):,} bytes")
        port = free_port()
        started = time.perf_counter()
        server = start_server(args, audit, port)
        print(f"server up in {time.perf_counter() - started:.1f} s, "
              f"resident {rss_mib(server.pid):.0f} MiB")
        try:
            run_load(httpx, args, server, port, bigs, phones)
            if not args.load_only:
                release_and_stop(httpx, server, port, phones[0])
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


def run_load(httpx, args, server, port, bigs, phones) -> None:
    url = f"http://127.0.0.1:{port}"
    counts: dict[str, int] = {}
    ids: list[str] = []
    samples = []
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        def call(kind: str, method: str, path: str, **kw) -> httpx.Response:
            response = client.request(method, path, **kw)
            if response.status_code != 200:
                raise SystemExit(f"{kind}: {response.status_code} {response.text[:300]}")
            counts[kind] = counts.get(kind, 0) + 1
            return response

        for n in range(args.requests):
            step = n % 10
            if step == 0:
                data = bigs[(n // 10) % 2]
                ids.append(call("upload-large", "POST", "/api/images", files={
                    "file": ("big.png", data, "image/png")}).json()["id"])
            elif step == 1:
                ids.append(call("upload-phone", "POST", "/api/images", files={
                    "file": ("phone.jpg", phones[n % 3], "image/jpeg")}).json()["id"])
            elif step in (2, 3, 4):
                target = "top:3" if step == 4 else "pred"
                call("explain", "POST", "/api/explain", json={
                    "image": ids[-1 - (step % 2)], "methods": ["gradcam", "saliency"],
                    "target": target})
            elif step in (5, 6):
                call("info", "GET", "/api/info")
            elif step == 7:
                call("photo", "GET", f"/api/images/{ids[-1]}")
            elif step == 8:
                call("audit-page", "GET", "/api/audits/0/images",
                     params={"offset": (n * 7) % 100, "limit": 24})
            else:
                call("audit-thumb", "GET", f"/api/audits/0/thumbs/{n % 120}")
            if (n + 1) % 100 == 0:
                samples.append((n + 1, rss_mib(server.pid)))
                print(f"  after {n + 1:5d} requests ({time.perf_counter() - started:6.1f} s): "
                      f"resident {samples[-1][1]:7.1f} MiB")
    print("requests: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    after_warmup = [rss for n, rss in samples if n >= 200]
    if after_warmup:
        print(f"resident after 200 requests: min {min(after_warmup):.0f}, max "
              f"{max(after_warmup):.0f}, last {after_warmup[-1]:.0f} MiB "
              f"(spread {max(after_warmup) - min(after_warmup):.0f} MiB); "
              f"peak of the process (VmHWM) {status_kib('VmHWM', server.pid) / 1024:.0f} MiB")


def release_and_stop(httpx, server, port, phone) -> None:
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=600) as client:
        token = client.post("/api/images", files={"file": ("p.jpg", phone, "image/jpeg")}
                            ).json()["id"]
        quick = {"image": token, "methods": ["gradcam"]}
        plain = []
        for _ in range(5):
            began = time.perf_counter()
            client.post("/api/explain", json=quick).raise_for_status()
            plain.append(time.perf_counter() - began)
        baseline = sorted(plain)[len(plain) // 2]
        began = time.perf_counter()
        one = client.post("/api/explain", json={"image": token, "methods": ["scorecam"]})
        one_seconds = time.perf_counter() - began
        print(f"explain gradcam: median {baseline * 1000:.0f} ms; scorecam for one class "
              f"{one_seconds:.1f} s ({one.status_code}), so the long one (top:8) would hold "
              f"the model ~{8 * one_seconds:.0f} s if left to finish")
        releases = []
        for _ in range(3):
            sock = long_explain_socket(port, token)
            time.sleep(1.0)  # the computation is inside the model now
            sock.close()
            began = time.perf_counter()
            client.post("/api/explain", json=quick).raise_for_status()
            releases.append(time.perf_counter() - began - baseline)
        print("abandoned long explain: the next gradcam waited "
              + ", ".join(f"{r * 1000:.0f}" for r in releases)
              + " ms beyond a plain one (time the model stayed held after the client left)")
    sock = long_explain_socket(port, token)
    time.sleep(1.0)
    began = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    server.wait(120)
    print(f"SIGTERM during the long explain: process gone after "
          f"{time.perf_counter() - began:.2f} s")
    sock.close()


if __name__ == "__main__":
    main()
