"""The committed demo features are what scripts/make_demo_features.py's settings produce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.visualization import gallery


@pytest.mark.slow
def test_one_committed_feature_is_reproduced() -> None:
    """Re-render the cheapest image (an early channel: the forward stops at blocks.2)."""
    from convlens.models.loading import load_model

    folder = Path(gallery.__file__).parents[1] / "data" / "demo_features"
    index = json.loads((folder / gallery.FEATURES_INDEX).read_text(encoding="utf-8"))
    committed = index["groups"][0]["items"][0]
    threads = torch.get_num_threads()
    torch.set_num_threads(index["threads"])  # the script's reduction order
    try:
        image, how = gallery.render_feature(load_model(device="cpu"), committed["objective"],
                                            **index["settings"])
    finally:
        torch.set_num_threads(threads)
    assert how["steps_reached"] == committed["steps_reached"]
    # same seed, same steps: the same objective values (a little slack for other CPUs'
    # vector units), and nearly the same picture
    assert how["objective_final"] == pytest.approx(committed["objective_final"], rel=2e-2)
    assert how["objective_half"] == pytest.approx(committed["objective_half"], rel=2e-2)
    with Image.open(folder / committed["file"]) as stored:
        difference = np.abs(np.asarray(stored, dtype=float) - np.asarray(image, dtype=float))
    assert difference.mean() < 8, difference.mean()
