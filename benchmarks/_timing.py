"""Shared helpers for the benchmark scripts: machine facts, timers, interleaved rounds, memory.

Measurement discipline (the machines these run on are small and shared):

* every timed callable is warmed up once, then timed in *rounds*. Callables are grouped (a
  method, its own floor and its peers); in each round the groups run in a freshly shuffled
  order and the members of a group run back to back, also shuffled. Neighbours on a shared
  machine come and go over tens of seconds, so a method and its floor timed seconds apart
  see the same machine: ratios are *paired* (median over rounds of the per-round ratio);
* the times reported are medians over rounds (and the minimum, the least disturbed one);
* on CUDA the clock is read after ``torch.cuda.synchronize()``.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated()`` minus the allocation before the
call (tensors only, excluding the caching allocator's reserve). On CPU torch's allocations are
invisible to ``tracemalloc``, so the peak is measured as resident memory: a fresh child process
loads the model, runs one gradient-free batch-1 forward, resets the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``), reads ``VmRSS``, makes the one call and reads ``VmHWM``.
The difference is the peak resident growth caused by the call (torch tensors, autograd
buffers and allocator slack), with the allocator settings printed in the header.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from _proc import reset_peak, status_kib

ALLOCATOR_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
                  "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(device: torch.device) -> dict[str, Any]:
    """Everything needed to read a timing: versions, CPU, threads, allocator env, GPU."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "env": {name: os.environ.get(name) for name in ALLOCATOR_VARS},
        "device": str(device),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        facts["loadavg"] = os.getloadavg()
    except OSError:
        facts["loadavg"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts["gpu"] = props.name
        facts["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        facts["cuda"] = torch.version.cuda
    for package in ("captum", "pytorch_grad_cam", "zennit"):
        try:
            module = __import__(package)
            facts[package] = getattr(module, "__version__", "installed")
        except ImportError:
            facts[package] = None
    return facts


def format_facts(facts: dict[str, Any]) -> str:
    env = ", ".join(f"{k}={v}" for k, v in facts["env"].items() if v is not None) or "(none set)"
    lines = [
        f"torch {facts['torch']} (python {facts['python']}), device {facts['device']}",
        f"CPU: {facts['cpu']}, {facts['cpu_count']} logical cores, torch threads "
        f"{facts['torch_threads']}, load average at start {facts.get('loadavg')}",
        f"allocator/thread env: {env}",
        "peers: " + ", ".join(f"{p} {facts.get(p) or 'missing'}"
                              for p in ("captum", "pytorch_grad_cam", "zennit")),
    ]
    if "gpu" in facts:
        lines.insert(1, f"GPU: {facts['gpu']} ({facts['gpu_memory_gib']} GiB), CUDA "
                        f"{facts['cuda']}")
    return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timed:
    """One callable timed in rounds.

    Attributes:
        key: Unique name (e.g. ``"ours:gradcam@16"``, ``"floor:pixel@16"``).
        fn: The zero-argument callable; its return value is discarded.
        rounds: How many timed rounds it takes part in (the first ``rounds`` of the run).
        times: Seconds, one per timed round.
        error: The exception text if a call failed (then it is not timed again).
        peak_bytes: Peak CUDA memory of the last call when measured in-process.
    """

    key: str
    fn: Callable[[], Any]
    rounds: int
    times: list[float] = field(default_factory=list)
    by_round: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    peak_bytes: int | None = None
    measure_cuda_memory: bool = False

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times else None


def _call(item: Timed, device: torch.device) -> float | None:
    if item.error is not None:
        return None
    try:
        if item.measure_cuda_memory and device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        synchronize(device)
        start = time.perf_counter()
        result = item.fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        del result
        if item.measure_cuda_memory and device.type == "cuda":
            item.peak_bytes = torch.cuda.max_memory_allocated(device) - before
        return elapsed
    except Exception as error:  # a peer that cannot run this model is reported, not fatal
        item.error = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None


def run_groups(groups: list[list[Timed]], rounds: int, device: torch.device, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> None:
    """Warm every item up once, then time ``rounds`` rounds; an item takes part while
    ``round < item.rounds``. Groups run in shuffled order, members back to back."""
    rng = random.Random(seed)
    order = [list(group) for group in groups]
    rng.shuffle(order)
    for group in order:
        for item in group:
            _call(item, device)
    gc.collect()
    for index in range(rounds):
        rng.shuffle(order)
        timed = 0
        for group in order:
            active = [item for item in group if index < item.rounds and item.error is None]
            rng.shuffle(active)
            for item in active:
                elapsed = _call(item, device)
                if elapsed is not None:
                    item.times.append(elapsed)
                    item.by_round[index] = elapsed
                    timed += 1
        if progress is not None:
            progress(f"round {index + 1}/{rounds} done ({timed} timed)")


def paired_ratio(a: Timed, b: Timed) -> float | None:
    """Median over the rounds both were timed in of ``a / b`` (None without common rounds)."""
    common = sorted(set(a.by_round) & set(b.by_round))
    ratios = [a.by_round[r] / b.by_round[r] for r in common if b.by_round[r] > 0]
    return statistics.median(ratios) if ratios else None


def paired_difference(a: Timed, b: Timed, scale: float = 1.0) -> float | None:
    """Median over the rounds both were timed in of ``a - scale * b``, in seconds.

    With ``b`` a method's floor this is its per-call overhead: the time of everything the
    call does beyond the passes it needs (hooks, mode switches, checks, syncs).
    """
    common = sorted(set(a.by_round) & set(b.by_round))
    diffs = [a.by_round[r] - scale * b.by_round[r] for r in common]
    return statistics.median(diffs) if diffs else None


# ---- CPU peak memory (child process side) ---------------------------------------------------

def peak_rss_growth(fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak resident-memory growth (bytes) during ``fn()`` in this process.

    Uses the kernel's resettable high-water mark when available (Linux >= 4.0); otherwise
    ``resource.getrusage`` max RSS, which can only report growth beyond the process's earlier
    peak (flagged ``exact: False``).
    """
    gc.collect()
    try:
        before = reset_peak()
        fn()
        peak = status_kib("VmHWM")
        return {"peak_growth_bytes": (peak - before) * 1024, "measure": "VmHWM-VmRSS",
                "exact": True}
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_growth_bytes": (after - before) * 1024, "measure": "ru_maxrss delta",
                "exact": False}
