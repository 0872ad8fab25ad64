"""``demo``: the bundled model on the sample photos, as one self-contained page."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from convlens.cli._common import console, friendly_errors, parse_methods
from convlens.cli._progress import cli_progress


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only).

    The demo allocates and frees large activation buffers over and over; glibc's default
    returns them to the OS (``munmap``, ``madvise``) and faults them back in, which took
    4.5 of 11 CPU minutes as system time on a 2-core machine. The same as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000``, set before torch allocates.

    Returns:
        True when glibc's ``mallopt`` accepted both settings.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to tune
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**62))


@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder."),
    method: str = typer.Option("default", "--method",
                               help="Methods to show: default (a subset covering every "
                                    "family), all, or a comma-separated list."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    features: bool = typer.Option(True, "--features/--no-features",
                                  help="Include the feature visualization section."),
    full: bool = typer.Option(False, "--full",
                              help="Every method (27) on all 4 photos and the full feature "
                                   "gallery rendered live (24 images, 256 steps): about "
                                   "10 CPU minutes (the old demo, which this extends, took "
                                   "11 on a 2-core laptop), against about one for the "
                                   "default."),
) -> None:
    """Predict and explain sample photos; write the self-contained page DIR/index.html.

    The default shows two photos, a representative subset of every method family and
    precomputed, converged feature visualizations: well under two CPU minutes.
    """
    tune_allocator()
    # OpenMP threads that spin while waiting burn CPU time for nothing when the cores are
    # shared (measured: saliency took 20x its one-thread CPU time on a loaded 2-core machine).
    # Read when torch loads its OpenMP runtime, which has not happened yet in this command.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from convlens.jobs.demo import build_demo  # lazy: after OMP_WAIT_POLICY, before torch

    methods = None if method.strip().lower() == "default" else parse_methods(method)
    with cli_progress() as progress:
        page = build_demo(out, methods=methods, device=device, features=features, full=full,
                          progress=progress)
    console.print(f"demo page: {page}")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the app."""
    app.command("demo")(demo)
