"""The audit's pass on the local engine against the Ray engine, on the same photos, one run.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        python benchmarks/bench_engines.py --photos 2000 --actors 2 --rounds 1

Photos are made from the bundled samples (seeded crops, flips, sizes, JPEG; the same maker as
bench_audit.py); the model is the bundled EfficientNet-Lite0 at 224 px, Grad-CAM, batch 32.
Per round, in alternating order (local first in odd rounds, Ray first in even ones), each
engine audits the photos into a fresh folder:

* ``local``: this process, torch with all of the machine's threads, decoding in-process
  (``--workers 0``), the default of ``convlens audit``;
* ``ray``: a local Ray instance with ``--actors`` actors of one CPU (one torch thread) each;
  Ray fuses the decoding into the actors on a CPU-only machine.

Where the CPU goes during each pass: this process (the driver: for ``ray``, Ray Data's
scheduling loop, receiving results and writing the store), the actor processes, and Ray's
other processes (raylet, GCS, its own bookkeeping actors), read from /proc.

The engines give byte-identical ``audit.json`` files when their workers use the same torch
thread count (tests/engines); here they do not (all threads locally, one per actor), so the
script also reports whether paths, predictions, clusters and the suspicion ranking agree and
the largest difference of a (6-digit) probability.

Reported per engine: the pass (first to last progress event of the ``audit`` stage: decoding,
forward, backward, store writes; Ray's actor start-up and model load included), the whole
``cl.audit`` (pass + SpRAy + causal checks), and once, Ray's own start (``ray.init``).
The overhead is ``ray pass / local pass - 1``; the two ``audit.json`` files are compared.
Raw rows go to benchmarks/results/engines.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_audit import make_photos  # noqa: E402


def _process_cpu() -> dict[int, tuple[str, float]]:
    """``pid -> (kind, CPU seconds so far)`` of Ray's processes on this machine; kinds are
    ``actors`` (the pool's MapWorker processes) and ``ray_other`` (raylet, GCS, Ray's own
    actors and agents)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if "ray" in command:
            kind = "actors" if "MapWorker" in command else "ray_other"
            found[int(pid)] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    return found


def _cpu_growth(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
                ) -> dict[str, float]:
    """CPU seconds spent between the snapshots by the processes alive at the second one
    (the actor pool lives to the end of a pass), by kind."""
    totals = {"actors": 0.0, "ray_other": 0.0}
    for pid, (kind, seconds) in after.items():
        totals[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    return totals


def _timed_audit(clf, data: Path, out: Path, **kwargs) -> dict:
    import convlens as cl

    events: list[tuple[float, float, object]] = []
    before = _process_cpu()
    start = time.perf_counter()
    cpu = time.process_time()
    after: dict[int, tuple[str, float]] = {}

    def progress(event) -> None:
        events.append((time.perf_counter(), time.process_time(), event))
        if event.stage == "audit" and event.done == event.total:
            after.update(_process_cpu())  # before the pool shuts down

    cl.audit(clf, data, out=out, batch_size=32, progress=progress, **kwargs)
    total = time.perf_counter() - start
    last = [(t, c) for t, c, e in events if e.stage == "audit"][-1]
    return {"pass_s": last[0] - start, "total_s": total,
            "pass_cpu_s": {"driver": last[1] - cpu, **_cpu_growth(before, after)},
            "audit_json": (out / "audit.json").read_text(encoding="utf-8")}


def _agreement(local: dict, remote: dict) -> dict:
    """How far two audit.json contents differ when they are not byte-identical (the local
    engine's torch threads and an actor's differ, and oneDNN's sums depend on them)."""
    pairs = list(zip(local["images"], remote["images"]))
    return {
        "same_paths": [a["path"] for a, _ in pairs] == [b["path"] for _, b in pairs],
        "same_predictions": all(a["predicted"] == b["predicted"] for a, b in pairs),
        "same_clusters": all(a["cluster"] == b["cluster"] for a, b in pairs),
        "max_probability_difference": max((abs(a["probability"] - b["probability"])
                                           for a, b in pairs), default=0.0),
        "same_ranking": [(s["class"], s["cluster"]) for s in local["suspicious"]]
        == [(s["class"], s["cluster"]) for s in remote["suspicious"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda: the local engine's device; with cuda, Ray gives "
                             "each actor a GPU (--actors GPUs are needed).")
    parser.add_argument("--keep", type=Path, default=None,
                        help="Make the photos here and keep them (reused when present).")
    args = parser.parse_args()

    import ray
    import torch

    import convlens as cl

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    photos = args.keep or work / "photos"
    if not (photos.is_dir() and len(list(photos.glob("*.jpg"))) == args.photos):
        make_photos(photos, args.photos)
    clf = cl.load_model(device=args.device)
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="warning")
    ray_start = time.perf_counter() - started
    load = os.getloadavg()[0]
    rows = {"local": [], "ray": []}
    try:
        for round_ in range(args.rounds):
            order = ("local", "ray") if round_ % 2 == 0 else ("ray", "local")
            for engine in order:
                out = work / f"{engine}-{round_}"
                options = {"actors": args.actors} if engine == "ray" else None
                row = _timed_audit(clf, photos, out, engine=engine, engine_options=options)
                rows[engine].append(row)
                shutil.rmtree(out)
                print(f"round {round_ + 1} {engine:5s}: pass {row['pass_s']:7.1f} s, whole "
                      f"audit {row['total_s']:7.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    same = all(r["audit_json"] == rows["local"][0]["audit_json"]
               for r in rows["local"] + rows["ray"])
    agreement = _agreement(json.loads(rows["local"][0]["audit_json"]),
                           json.loads(rows["ray"][0]["audit_json"]))
    local = statistics.median(r["pass_s"] for r in rows["local"])
    remote = statistics.median(r["pass_s"] for r in rows["ray"])
    summary = {
        "bench": "engines", "photos": args.photos, "actors": args.actors,
        "rounds": args.rounds, "cpu_count": os.cpu_count(), "load_average_1m": load,
        "malloc": {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")},
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "ray": ray.__version__, "torch": torch.__version__, "ray_init_s": round(ray_start, 2),
        "local_pass_s": round(local, 2), "ray_pass_s": round(remote, 2),
        "local_photos_per_s": round(args.photos / local, 2),
        "ray_photos_per_s": round(args.photos / remote, 2),
        "ray_over_local": round(remote / local, 3),
        "local_total_s": round(statistics.median(r["total_s"] for r in rows["local"]), 2),
        "ray_total_s": round(statistics.median(r["total_s"] for r in rows["ray"]), 2),
        "pass_cpu_s": {engine: {k: round(statistics.median(r["pass_cpu_s"][k] for r in got), 1)
                                for k in got[0]["pass_cpu_s"]}
                       for engine, got in rows.items()},
        "audit_json_identical": same, **agreement,
        "threads": {"local": torch.get_num_threads(), "ray_actor": 1},
    }
    print(json.dumps(summary, indent=1))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    with open(results / "engines.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
