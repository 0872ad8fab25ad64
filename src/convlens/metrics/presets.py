"""Named option sets for metrics whose definition the field does not agree on.

A preset only sets options that exist on the metric (checked at registration). Scores are
comparable only when their option sets match; every result's card records the preset and
the full options (docs/architecture.md, "Layers": metrics sit above attribution).

- ``deletion`` / ``insertion``:
  ``rise`` (the default) follows Petsiuk et al.'s reference code (``evaluation.py`` of the
  RISE repository): 224 pixels per step (225 forwards per curve at 224 x 224), all channels
  of a pixel at once, deletion to zeros, insertion from a Gaussian blur (kernel 11, sigma 5,
  built like their ``gkern``), the softmax probability of the explained class, trapezoid area.
  ``xplique``: Xplique's ``Deletion`` / ``Insertion`` defaults, 10 steps over all pixels,
  baseline 0 for both (insertion starts from zeros, not from a blur).
- ``mufidelity``: ``xplique``: Xplique's ``MuFidelity`` defaults (grid 9, 20 % of the cells
  removed, 200 samples, baseline 0), which are also the defaults here.
- ``infidelity``: ``captum``: Captum's documented noise perturbation (N(0, 0.003)), 10 samples,
  no normalisation: the defaults here, named so results can be compared with Captum's.
- ``max_sensitivity``: ``captum``: ``captum.metrics.sensitivity_max`` defaults (uniform noise
  in an L-infinity ball of radius 0.02, 10 samples, Frobenius norm), the defaults here.
- ``faithfulness_correlation``: ``quantus``: Quantus's defaults (100 runs of 224 features).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "deletion": {
        "rise": {"step": 224, "steps": None, "substrate": "zeros", "output": "probability"},
        "xplique": {"step": None, "steps": 10, "substrate": 0.0, "output": "probability"},
    },
    "insertion": {
        "rise": {"step": 224, "steps": None, "substrate": "blur", "blur_kernel": 11,
                 "blur_sigma": 5.0, "output": "probability"},
        "xplique": {"step": None, "steps": 10, "substrate": 0.0, "output": "probability"},
    },
    "mufidelity": {
        "xplique": {"grid": 9, "subset": 0.2, "samples": 200, "baseline": 0.0},
    },
    "infidelity": {
        "captum": {"samples": 10, "sigma": 0.003, "normalize": False, "output": "logit"},
    },
    "max_sensitivity": {
        "captum": {"radius": 0.02, "samples": 10, "norm": "fro"},
    },
    "faithfulness_correlation": {
        "quantus": {"runs": 100, "subset": 224, "baseline": 0.0, "output": "logit"},
    },
}
