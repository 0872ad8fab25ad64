"""Time of ``make demo`` after installation: ``convlens demo`` in a child process.

Prints wall time, user and system CPU time and peak resident memory of the child (from
``os.wait4``), for each allocator setting asked for:

* ``tuned``: what ``make demo`` runs: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e12`` in
  the environment (``convlens demo`` also sets the same with ``mallopt`` at start);
* ``default``: glibc's defaults (the environment variables removed; ``mallopt`` still runs,
  so this shows what the in-process setting alone achieves).

System time is the thing to watch: with glibc's defaults the allocator hands freed
activation buffers back to the OS and faults them in again, which was 4.5 of 11 CPU
minutes of the old demo. On a shared machine wall time depends on the neighbours; CPU
time much less.

Usage::

    python benchmarks/bench_demo.py                       # default demo, tuned allocator
    python benchmarks/bench_demo.py --settings tuned default
    python benchmarks/bench_demo.py --full                # the --full demo (many minutes)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}


def run_demo(setting: str, full: bool, extra: list[str]) -> dict[str, float]:
    """Run ``convlens demo`` once in a child process; its wall, CPU and peak memory."""
    env = {k: v for k, v in os.environ.items() if k not in TUNED}
    if setting == "tuned":
        env.update(TUNED)
    out = Path(tempfile.mkdtemp(prefix="convlens-bench-demo-"))
    command = [sys.executable, "-c", "from convlens.cli import main; main()", "demo",
               "--out", str(out)]
    command += (["--full"] if full else []) + extra
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    shutil.rmtree(out, ignore_errors=True)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"convlens demo failed ({setting}):\n{output}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=["tuned"],
                        choices=["tuned", "default"])
    parser.add_argument("--full", action="store_true", help="time `convlens demo --full`")
    parser.add_argument("extra", nargs="*", help="more arguments for `convlens demo`")
    args = parser.parse_args()
    print(f"convlens demo{' --full' if args.full else ''} on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'allocator':>10} {'wall s':>8} {'user s':>8} {'sys s':>8} {'CPU s':>8} "
          f"{'peak MB':>8}")
    for setting in args.settings:
        r = run_demo(setting, args.full, args.extra)
        print(f"{setting:>10} {r['wall']:8.1f} {r['user']:8.1f} {r['sys']:8.1f} "
              f"{r['user'] + r['sys']:8.1f} {r['peak_mb']:8.0f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
