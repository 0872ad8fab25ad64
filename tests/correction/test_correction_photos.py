"""benchmarks/correction_photos.py, the real-model proof of P-ClArC: what it measures on.

The benchmark's numbers are in BENCHMARKS.md; here only the two choices that make them mean
something: the fresh photos are another random stream of the audited recipe (none of them
audited), and the strategy corrected is the one a user would pick (mostly overlay-induced
mistakes, gathering the most of them), not a one-image strategy that is 100 % mistakes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


_load("shortcut_suite")
photos = _load("shortcut_photos")
bench = _load("correction_photos")


def _digests(arrays) -> set[str]:
    return {hashlib.sha256(a.tobytes()).hexdigest() for a in arrays}


def test_fresh_stream_draws_other_photos_and_the_audited_stream_is_unchanged() -> None:
    audited = photos.make_inputs(6, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(audited, photos.make_inputs(6, 0, stream=71)))
    fresh = photos.make_inputs(6, seed=0, stream=bench.FRESH_STREAM)
    assert len(_digests(fresh)) == 6 and not _digests(fresh) & _digests(audited)
    assert all(a.shape == (photos.SIZE, photos.SIZE, 3) and a.dtype == np.uint8 for a in fresh)


def test_pick_strategy_prefers_the_one_gathering_the_overlay_mistakes_over_a_singleton() -> None:
    mistakes = {f"m{k}-art.png" for k in range(6)}
    data = {"strategies": [
        {"id": 1, "members": ["c1.png", "c2.png", "c3.png"]},
        {"id": 2, "members": ["m0-art.png"]},                                  # 100 %, 1 mistake
        {"id": 3, "members": ["m1-art.png", "m2-art.png", "m3-art.png", "m4-art.png",
                              "c4.png"]},                                        # 80 %, 4
        {"id": 4, "members": ["m5-art.png", "c5.png", "c6.png", "c7.png"]}]}     # 25 %, 1
    assert bench.pick_strategy(data, mistakes)["id"] == 3
    assert bench.first_is_overlay(data, mistakes) is False
    # when none is mostly mistakes, the one holding the most; none at all: None
    data["strategies"] = data["strategies"][3:] + [{"id": 5, "members": ["m1-art.png",
                                                                         "m2-art.png", "c8.png",
                                                                         "c9.png", "c10.png"]}]
    assert bench.pick_strategy(data, mistakes)["id"] == 5
    assert bench.pick_strategy({"strategies": [{"id": 1, "members": ["c1.png"]}]},
                               mistakes) is None
