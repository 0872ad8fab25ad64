"""Render the default demo's feature visualizations once and commit them.

Run by hand when the bundled model or the optimiser changes (never at run time)::

    PYTHONPATH=src python scripts/make_demo_features.py

Writes ``src/convlens/data/demo_features/*.png`` and ``features.json``: for every image its
objective, caption, settings (size, seed, parameterisation, transforms, learning rate),
steps requested and reached, the objective's value at the last step and halfway (how far it
still moved: convergence), and the seconds it took. Each objective is rendered alone (one
``visualize`` call) so that ``tests/jobs/test_demo_features.py`` can re-render one and
compare it with the committed record. One torch thread, as in that test, so the floating
point reductions run in the same order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from convlens.models.loading import load_model
from convlens.visualization.gallery import (
    FEATURES_INDEX,
    PRECOMPUTED,
    PRECOMPUTED_SETTINGS,
    class_captions,
    render_feature,
)
from convlens.visualization.inspection import file_stem

OUT = Path(__file__).resolve().parents[1] / "src" / "convlens" / "data" / "demo_features"


def main() -> None:
    """Render every objective of :data:`PRECOMPUTED` and write the PNGs and the index."""
    torch.set_num_threads(1)
    classifier = load_model(device="cpu")
    OUT.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    used: set[str] = set()
    groups = []
    for title, objectives in PRECOMPUTED:
        items = []
        for objective in objectives:
            image, how = render_feature(classifier, objective, **PRECOMPUTED_SETTINGS)
            name = f"{file_stem(objective, used)}.png"
            image.save(OUT / name, optimize=True)
            if objective.startswith("class:"):
                tensor = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
                caption = class_captions(classifier, tensor[None].float() / 255,
                                         [int(objective.split(":")[1])])[0]
            else:
                caption = f"channel {objective.rsplit(':', 1)[1]}"
            how.update(file=name, caption=caption)
            items.append(how)
            print(f"{objective:>14}: {how['steps_reached']} steps, objective "
                  f"{how['objective_half']:.3f} at half -> {how['objective_final']:.3f} "
                  f"({how['seconds']:.1f} s)", flush=True)
        groups.append({"title": title, "items": items})
    index = {
        "made_by": "scripts/make_demo_features.py",
        "model": classifier.name,
        "torch": torch.__version__,
        "threads": 1,
        "settings": PRECOMPUTED_SETTINGS,
        "seconds": round(time.perf_counter() - began, 1),
        "groups": groups,
    }
    (OUT / FEATURES_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {sum(len(g['items']) for g in groups)} images to {OUT} "
          f"in {index['seconds']} s")


if __name__ == "__main__":
    main()
